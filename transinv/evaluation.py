"""Evaluating a network: running it over the test grid (accuracy at every canvas centre and
per-layer activation similarity, batched over centres and items, no loop over single images), and
assembling each phase's evaluation record (`evaluate_pretrain`, `evaluate_finetune`) with the
values its forgetting curves follow.

The arithmetic on the resulting arrays (summaries, G, forgetting) and every metric key live in
`metrics.py`; when to evaluate, in `trainer.py`. A new metric: its key and pure function in
`metrics.py`, its call in an `evaluate_*` here.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from transinv import metrics
from transinv.canvas import Renderer
from transinv.regimes import uniform_int, valid_range

EVAL_PIXELS = 64 * 64 * 64
"""Canvas pixels per forward pass during evaluation: 64 canvases of 64 px. Larger passes were
slower on 2 CPU cores (benchmarks/bench_eval.py: 512 canvases per pass took 1.8x longer, the
allocator mapping and unmapping their activations every time); at 224 px the same budget is 5
canvases, which keeps a VGG's first-block activations small."""


@dataclass(frozen=True)
class Evaluation:
    """One evaluation: the phase, the step within it (0 = before its first update), scalar
    metrics under the keys of `metrics.py`, and arrays for heatmaps ([Gy, Gx] grids)."""

    phase: str
    step: int
    metrics: dict[str, float]
    grids: dict[str, np.ndarray] = field(default_factory=dict)
    final: bool = False
    """The last evaluation of its phase."""


@dataclass(frozen=True)
class HeldOut:
    """A phase's fixed held-out test items and where they are shown.

    items: [N, k, k]; labels: [N]; centres: [N, 2], where training items of their class go.
    """

    items: torch.Tensor
    labels: torch.Tensor
    centres: torch.Tensor
    render: Renderer
    num_classes: int


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


def balanced_subset(labels: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of n items, round-robin over classes (item i has class i % C while classes last),
    so every class is tested about equally. labels: [M], sorted or not."""
    classes = labels.unique()
    pools = [torch.nonzero(labels == c).flatten().tolist() for c in classes]
    out: list[int] = []
    depth = 0
    while len(out) < n and any(depth < len(p) for p in pools):
        out.extend(p[depth] for p in pools if depth < len(p))
        depth += 1
    return torch.tensor(out[:n])


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
            if output.dim() == 4 and output.is_contiguous(memory_format=torch.channels_last):
                # Flatten in memory order (a view, not a copy); cosines do not depend on the
                # order of units as long as every activation uses the same one.
                output = output.permute(0, 2, 3, 1)
            captured[name] = output.flatten(1)

        handles.append(net.probe_layers[name].register_forward_hook(hook))
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


def _forward(net: nn.Module, images: torch.Tensor) -> torch.Tensor:
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
        ref_logits = _forward(net, render(items, trained))
        acc_trained = float((ref_logits.argmax(1) == labels).float().mean())
        refs = {name: metrics.unit_references((a, a[unpartner])) for name, a in acts.items()}
        for start in range(0, len(centres), per_pass):
            chunk = centres[start : start + per_pass]
            p = len(chunk)
            batch_centres = chunk.repeat_interleave(n, dim=0)
            logits = _forward(net, render(items.repeat(p, 1, 1), batch_centres))
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


def accuracy_at(
    net: nn.Module,
    items: torch.Tensor,
    labels: torch.Tensor,
    centres: torch.Tensor,
    render: Renderer,
    head: nn.Module | None = None,
    device: torch.device | str = "cpu",
) -> tuple[float, torch.Tensor]:
    """Accuracy of items at given centres, and the predictions [N]. With `head`, the net's trunk
    and hidden layers feed that head instead of the net's own (the pretraining head, for
    forgetting of the pretraining task)."""
    preds = []
    batch = eval_batch(render.size)
    with eval_mode(net):
        for start in range(0, len(items), batch):
            x = render(items[start : start + batch].to(device), centres[start : start + batch])
            x = x.contiguous(memory_format=torch.channels_last)
            if head is None:
                out = net(x)
            else:
                out = head(net.classifier(net.pool(net.features(x))))
            preds.append(out.argmax(1))
    pred = torch.cat(preds)
    return float((pred == labels.to(pred.device)).float().mean()), pred


def random_centres(
    n: int, size: int, item_size: int, gen: torch.Generator, min_distance: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two centres per item, uniform over the valid range, at least `min_distance` apart.
    Returns ([n, 2], [n, 2])."""
    lo, hi = valid_range(size, item_size)
    if min_distance > np.hypot(hi - 1 - lo, hi - 1 - lo):
        raise ValueError(f"no two centres are {min_distance} px apart on a {size} px canvas")
    low, high = torch.full((n, 2), lo), torch.full((n, 2), hi)
    a, b = uniform_int(low, high, gen), uniform_int(low, high, gen)
    while True:
        bad = torch.hypot(*(a - b).double().T) < min_distance
        if not bad.any():
            return a, b
        b[bad] = uniform_int(low[bad], high[bad], gen)


def positional_consistency(
    net: nn.Module,
    items: torch.Tensor,
    render: Renderer,
    size: int,
    seed: int,
    device: torch.device | str = "cpu",
) -> float:
    """Fraction of items whose predicted class is the same at two random centres at least one
    item width apart (label-free, after Zhang 2019)."""
    gen = torch.Generator().manual_seed(seed)
    a, b = random_centres(len(items), size, items.shape[-1], gen, items.shape[-1])
    dummy = torch.zeros(len(items), dtype=torch.long)
    _, pred_a = accuracy_at(net, items, dummy, a, render, device=device)
    _, pred_b = accuracy_at(net, items, dummy, b, render, device=device)
    return float((pred_a == pred_b).float().mean())


# ---------------------------------------------------------------------------------------------
# Each phase's evaluation record. Both take the same arguments after their bound ones (see
# `phases.py`): the net, the head of the previous phase (None if none), the step, the running
# (loss, train accuracy) since the last evaluation, and whether it is the phase's last.


def evaluate_pretrain(
    net: nn.Module,
    previous_head: nn.Module | None,
    step: int,
    running: tuple[float, float],
    final: bool,
    *,
    held_out: HeldOut,
    grid: TestGrid,
    grid_items: int,
    device: torch.device,
) -> Evaluation:
    """Held-out accuracy under the pretraining regime; at the end, also over the test grid."""
    loss, train_acc = running
    d = held_out
    acc, _ = accuracy_at(net, d.items, d.labels, d.centres, d.render, device=device)
    out = {
        metrics.PRETRAIN_LOSS: loss,
        metrics.PRETRAIN_TRAIN_ACC: train_acc,
        metrics.PRETRAIN_ACC: acc,
    }
    grids: dict[str, np.ndarray] = {}
    if final:
        # The pretraining set over the finetuning test grid: is the net invariant for its own
        # classes?
        items, labels = d.items[:grid_items], d.labels[:grid_items]
        result = evaluate_grid(net, items, labels, grid, d.render, device=device)
        out[metrics.PRETRAIN_ACC_WHOLE] = float(result.acc.mean())
        grids[metrics.PRETRAIN_ACC_GRID] = result.acc
    return Evaluation("pretrain", step, out, grids, final)


def evaluate_finetune(
    net: nn.Module,
    previous_head: nn.Module | None,
    step: int,
    running: tuple[float, float],
    final: bool,
    *,
    held_out: HeldOut,
    grid: TestGrid,
    seed: int,
    device: torch.device,
    forgetting: HeldOut | None,
) -> Evaluation:
    """Accuracy and invariance over the test grid, positional consistency, and (with a previous
    phase) accuracy on its task through the current trunk and its head: forgetting."""
    loss, train_acc = running
    d = held_out
    layers = list(net.probe_layers)
    result = evaluate_grid(net, d.items, d.labels, grid, d.render, layers, device=device)
    untrained = grid.untrained()
    out = {metrics.FINETUNE_LOSS: loss, metrics.FINETUNE_TRAIN_ACC: train_acc}
    chance = 1.0 / d.num_classes
    out.update(
        metrics.grid_summary(result.acc, untrained, grid.aligned(), result.acc_trained, chance)
    )
    invariance, g_grids = metrics.invariance_summary(result.i_grids, result.d_grids, untrained)
    out.update(invariance)
    out[metrics.CONSISTENCY] = positional_consistency(
        net, d.items, d.render, d.render.size, seed, device
    )
    if previous_head is not None and forgetting is not None:
        f = forgetting
        out[metrics.FORGETTING_PRETRAIN_ACC], _ = accuracy_at(
            net, f.items, f.labels, f.centres, f.render, head=previous_head, device=device
        )
    grids = {metrics.ACC_GRID: result.acc, **g_grids}
    return Evaluation("finetune", step, out, grids, final)


FORGETTING_CURVES = (metrics.ACC_UNTRAINED, metrics.ACC_TRAINED, metrics.FORGETTING_PRETRAIN_ACC)
"""Curves whose drop from their peak is summarised at the end, besides G of every layer."""


def curve_points(evaluation: Evaluation) -> dict[str, float]:
    """The values of an evaluation that forgetting summaries follow."""
    g_prefix = metrics.invariance_key("G", "")
    return {
        key: float(value)
        for key, value in evaluation.metrics.items()
        if key in FORGETTING_CURVES or key.startswith(g_prefix)
    }
