"""The test grid: the centres a finetuning set is tested at (`TestGrid`, `build_grid`), and running
a network over it, every item at every centre, batched over centres and items with no loop over
single images (`evaluate_grid`: accuracy per centre, and per layer the cosine of each item with
itself and with another class's item at the trained centre). Also the means every evaluation
pass shares: eval mode, probes on named layers, the forward-pass budget.

The arithmetic on the resulting arrays (summaries, G) lives in `metrics.py`; assembling each
phase's evaluation record, and the measurements off the grid (positional consistency,
jaggedness, N-way matching, the horizontal-line cosine), in `evaluation.py`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from transinv import metrics
from transinv.canvas import Renderer
from transinv.regimes import valid_range

EVAL_PIXELS = 64 * 64 * 64
"""Canvas pixels per forward pass during evaluation: 64 canvases of 64 px. Larger passes were
slower on 2 CPU cores (benchmarks/bench_eval.py: 512 canvases per pass took 1.8x longer, the
allocator mapping and unmapping their activations every time); at 224 px the same budget is 5
canvases, which keeps a VGG's first-block activations small."""


def eval_batch(size: int) -> int:
    """Canvases per evaluation forward pass for a canvas side."""
    return max(1, EVAL_PIXELS // (size * size))


@dataclass(frozen=True)
class TestGrid:
    """The centres items are tested at, and what they are relative to.

    xs, ys: pixel centres along each axis (the grid is their product).
    """

    xs: np.ndarray
    ys: np.ndarray
    step: int
    offset: int
    trained: tuple[int, int]
    stride: int
    item_size: int

    @property
    def step_aligned(self) -> bool:
        """Whether the grid step is a multiple of the net's total stride (overstates
        invariance)."""
        return self.step % self.stride == 0

    def centres(self) -> np.ndarray:
        """[Gy * Gx, 2] (x, y), row-major over (y, x)."""
        gx, gy = np.meshgrid(self.xs, self.ys)
        return np.stack([gx.ravel(), gy.ravel()], axis=1)

    def untrained(self) -> np.ndarray:
        return metrics.untrained_mask(self.xs, self.ys, self.trained, self.item_size)

    def aligned(self) -> np.ndarray:
        return metrics.aligned_mask(self.xs, self.ys, self.trained, self.stride)

    def near(self) -> np.ndarray:
        return metrics.near_mask(self.xs, self.ys, self.trained, self.item_size)

    def untrained_spread(self, count: int) -> np.ndarray:
        """[M, 2] (x, y): up to `count` untrained centres, spread evenly over them in row-major
        order (the measurements that cost a pass per centre take these)."""
        centres = self.centres()[self.untrained().ravel()]
        if len(centres) <= count:
            return centres
        return centres[np.round(np.linspace(0, len(centres) - 1, count)).astype(int)]

    def hline(self) -> np.ndarray:
        """[P, 2] (x, y): on the horizontal line through the trained centre, the grid's columns
        at least one item width from it (the authors' cosine probe)."""
        x0, y0 = self.trained
        xs = self.xs[np.abs(self.xs - x0) >= self.item_size]
        return np.stack([xs, np.full_like(xs, y0)], axis=1)

    def describe(self) -> dict[str, float]:
        return {
            "grid_step_px": self.step,
            "grid_offset_px": self.offset,
            "grid_points": len(self.xs) * len(self.ys),
            "stride": self.stride,
            "grid_step_aligned": float(self.step_aligned),
        }


def build_grid(
    size: int,
    item_size: int,
    step: float,
    offset: float,
    trained: tuple[int, int],
    stride: int,
) -> TestGrid:
    """Centres from the low edge of the valid range + offset, every `step` (canvas fractions)."""
    lo, hi = valid_range(size, item_size)
    step_px = max(1, round(step * size))
    offset_px = round(offset * size)
    axis = np.arange(lo + offset_px, hi, step_px)
    if len(axis) == 0:
        axis = np.array([lo])
    return TestGrid(axis, axis.copy(), step_px, offset_px, trained, stride, item_size)


def other_class_partner(labels: torch.Tensor) -> torch.Tensor:
    """A permutation pi with labels[pi[i]] != labels[i] for every i (a cyclic shift), for the
    different-item baseline D."""
    n = len(labels)
    for shift in range(1, n):
        perm = torch.roll(torch.arange(n), -shift)
        if bool((labels[perm] != labels).all()):
            return perm
    raise ValueError("the D baseline needs items of at least two classes")


@contextmanager
def probed(net: nn.Module, layers: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Collect the outputs of the named probe layers on each forward, flattened: [B, D]."""
    captured: dict[str, torch.Tensor] = {}
    handles = []
    for name in layers:

        def hook(module, inputs, output, name=name):
            captured[name] = _flat(output)

        handles.append(net.probe_layers[name].register_forward_hook(hook))
    try:
        yield captured
    finally:
        for h in handles:
            h.remove()


def preactivation_points(net: nn.Module) -> dict[str, tuple[nn.Module, bool]]:
    """Probe name -> (module, whether its INPUT is the activation): where each probe of
    `net.probe_layers` is seen before its ReLU (the authors' early measure).

    A probe that is a ReLU: its input. A probe that is a block (ResNet's stages): the input of
    the last ReLU inside it at its last call (BasicBlock calls its one ReLU twice, the final
    add last). A probe without a ReLU (the logits): its output.
    """
    out: dict[str, tuple[nn.Module, bool]] = {}
    for name, module in net.probe_layers.items():
        relus = [m for m in module.modules() if isinstance(m, nn.ReLU)]
        out[name] = (relus[-1], True) if relus else (module, False)
    return out


def _flat(t: torch.Tensor) -> torch.Tensor:
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        # Flatten in memory order (a view, not a copy); cosines do not depend on the order of
        # units as long as every activation uses the same one.
        t = t.permute(0, 2, 3, 1)
    return t.flatten(1)


@contextmanager
def preactivations(net: nn.Module, layers: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Like `probed`, before the ReLU (`preactivation_points`): [B, D] per named layer."""
    captured: dict[str, torch.Tensor] = {}
    points = preactivation_points(net)
    handles = []
    for name in layers:
        module, takes_input = points[name]
        if takes_input:

            def pre_hook(module, inputs, name=name):
                # A copy: an in-place ReLU (torchvision's) overwrites its input.
                captured[name] = _flat(inputs[0]).clone()

            handles.append(module.register_forward_pre_hook(pre_hook))
        else:

            def hook(module, inputs, output, name=name):
                captured[name] = _flat(output)

            handles.append(module.register_forward_hook(hook))
    try:
        yield captured
    finally:
        for h in handles:
            h.remove()


@contextmanager
def eval_mode(net: nn.Module) -> Iterator[None]:
    """Eval mode and no grad for the block; the previous per-module modes come back after."""
    modes = {m: m.training for m in net.modules()}
    net.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, training in modes.items():
            m.training = training


def forward(net: nn.Module, images: torch.Tensor) -> torch.Tensor:
    return net(images.contiguous(memory_format=torch.channels_last))


@dataclass(frozen=True)
class GridResult:
    """acc: [Gy, Gx] accuracy at each centre; acc_trained: accuracy at the trained centre;
    i_grids / d_grids: layer -> [Gy, Gx] mean cosine (same item / other-class item) between an
    item at the trained centre and at each grid centre."""

    acc: np.ndarray
    acc_trained: float
    i_grids: dict[str, np.ndarray]
    d_grids: dict[str, np.ndarray]


def evaluate_grid(
    net: nn.Module,
    items: torch.Tensor,
    labels: torch.Tensor,
    grid: TestGrid,
    render: Renderer,
    layers: Sequence[str] = (),
    device: torch.device | str = "cpu",
) -> GridResult:
    """Every item at every grid centre, in batches of whole centres.

    items: [N, k, k]; labels: [N]; render(items, centres [B, 2]) -> canvases [B, C, S, S].
    """
    device = torch.device(device)
    items, labels = items.to(device), labels.to(device)
    n = len(items)
    # D pairs item i at the trained centre with its partner pi(i) at p; summed over items that
    # is item j at p against reference pi^-1(j), so the references are permuted, not the
    # (much larger) activations at p.
    unpartner = torch.argsort(other_class_partner(labels.cpu())).to(device) if layers else None
    centres = torch.from_numpy(grid.centres()).long()
    gy, gx = len(grid.ys), len(grid.xs)
    correct = torch.zeros(len(centres), device=device)
    i_sum = {name: torch.zeros(len(centres), device=device) for name in layers}
    d_sum = {name: torch.zeros(len(centres), device=device) for name in layers}
    per_pass = max(1, eval_batch(render.size) // n)
    with eval_mode(net), probed(net, layers) as acts:
        trained = torch.tensor(grid.trained).repeat(n, 1)
        ref_logits = forward(net, render(items, trained))
        acc_trained = float((ref_logits.argmax(1) == labels).float().mean())
        refs = {name: metrics.unit_references((a, a[unpartner])) for name, a in acts.items()}
        for start in range(0, len(centres), per_pass):
            chunk = centres[start : start + per_pass]
            p = len(chunk)
            batch_centres = chunk.repeat_interleave(n, dim=0)
            logits = forward(net, render(items.repeat(p, 1, 1), batch_centres))
            hits = (logits.argmax(1) == labels.repeat(p)).float().view(p, n)
            correct[start : start + p] = hits.mean(1)
            for name in layers:
                dots = metrics.cosines(acts[name].view(p, n, -1), refs[name])  # [n, p, 2]
                i_sum[name][start : start + p] = dots[:, :, 0].mean(0)
                d_sum[name][start : start + p] = dots[:, :, 1].mean(0)
    return GridResult(
        acc=correct.view(gy, gx).cpu().numpy(),
        acc_trained=acc_trained,
        i_grids={k: v.view(gy, gx).cpu().numpy() for k, v in i_sum.items()},
        d_grids={k: v.view(gy, gx).cpu().numpy() for k, v in d_sum.items()},
    )
