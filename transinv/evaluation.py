"""Assembling each phase's evaluation record (`evaluate_pretrain`, `evaluate_finetune`) with the
values its forgetting curves follow, accuracy at given centres and positional consistency.

Running a net over the test grid lives in `grid.py`; jaggedness, N-way matching and the
horizontal-line cosine (extra passes at chosen centres) in `shifts.py`; the arithmetic on the
resulting arrays (summaries, G, jaggedness, N-way accuracy, forgetting) and every metric key in
`metrics.py`; when to evaluate, in `trainer.py`. A new metric: its key and pure function in
`metrics.py`, its call in an `evaluate_*` here (or in `shifts.py` when it needs passes of its own).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from transinv import metrics
from transinv.canvas import Renderer
from transinv.grid import TestGrid, eval_batch, eval_mode, evaluate_grid
from transinv.regimes import uniform_int, valid_range
from transinv.shifts import hline_cosine, jaggedness_at, nway_at


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
class TrialResult:
    """Final finetuning metrics plus forgetting summaries, and the trial's descriptive info
    (stop reasons, steps run, test grid, normalisation)."""

    metrics: dict[str, float]
    info: dict[str, Any]
    curves: dict[str, dict[int, float]]
    grid: TestGrid
    seconds: dict[str, float] = field(default_factory=dict)
    """Where the trial's time went, by part (`metrics.TIME_PARTS`, `pretrain_saved`)."""


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
    """Two valid centres per item at least `min_distance` apart: the first uniform over the
    centres that have such a partner, the second uniform over its partners. One draw each, no
    retries (a rejection loop never ended when a first centre had no partner, e.g. the middle
    of a 32 px canvas with 16 px items). Returns ([n, 2], [n, 2]) as (x, y).

    Raises ValueError when no two valid centres are that far apart (config validation refuses
    such canvases for one item width up front).
    """
    lo, hi = valid_range(size, item_size)
    axis = torch.arange(lo, hi)
    centres = torch.cartesian_prod(axis, axis)  # [V * V, 2]
    limit = min_distance**2

    def far(points: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
        """[P, O] bool: squared integer distances, so the comparison is exact."""
        return ((points[:, None, :] - others[None, :, :]) ** 2).sum(2).double() >= limit

    # The farthest valid centre from any centre is a corner of the valid square.
    corners = torch.tensor([[lo, lo], [lo, hi - 1], [hi - 1, lo], [hi - 1, hi - 1]])
    firsts = centres[far(centres, corners).any(1)]
    if len(firsts) == 0:
        raise ValueError(
            f"no two centres are {min_distance:g} px apart on a {size} px canvas with "
            f"{item_size} px items"
        )
    a = firsts[uniform_int(torch.zeros(n, dtype=torch.long), torch.full((n,), len(firsts)), gen)]
    partners = far(a, centres)  # [n, V * V]
    k = uniform_int(torch.zeros(n, dtype=torch.long), partners.sum(1), gen)
    # The k-th partner (0-based): the first place where the running count exceeds k.
    b = centres[(partners.cumsum(1) > k[:, None]).int().argmax(1)]
    return a, b


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
    nway: int = 5,
    shift_centres: int = 2,
) -> Evaluation:
    """Accuracy and invariance over the test grid; positional consistency; jaggedness at the
    trained centre and at `shift_centres` untrained ones; N-way matching there (`nway`
    candidates); the authors' pre-ReLU cosine along the horizontal line; and (with a previous
    phase) accuracy on its task through the current trunk and its head: forgetting."""
    loss, train_acc = running
    d = held_out
    layers = list(net.probe_layers)
    result = evaluate_grid(net, d.items, d.labels, grid, d.render, layers, device=device)
    untrained = grid.untrained()
    out = {metrics.FINETUNE_LOSS: loss, metrics.FINETUNE_TRAIN_ACC: train_acc}
    chance = 1.0 / d.num_classes
    out.update(
        metrics.grid_summary(
            result.acc, untrained, grid.aligned(), result.acc_trained, chance, grid.near()
        )
    )
    invariance, g_grids = metrics.invariance_summary(result.i_grids, result.d_grids, untrained)
    out.update(invariance)
    out[metrics.CONSISTENCY] = positional_consistency(
        net, d.items, d.render, d.render.size, seed, device
    )
    trained = np.array([grid.trained])
    spread = grid.untrained_spread(shift_centres)
    out[metrics.JAGGEDNESS], out[metrics.JAGGEDNESS_PROB] = jaggedness_at(
        net, d.items, trained, d.render, device
    )
    out[metrics.JAGGEDNESS_UNTRAINED], out[metrics.JAGGEDNESS_PROB_UNTRAINED] = jaggedness_at(
        net, d.items, spread, d.render, device
    )
    out[metrics.NWAY_CHANCE] = 1.0 / nway
    nways = nway_at(net, d.items, d.labels, grid, spread, d.render, layers, nway, device)
    out.update({metrics.invariance_key("nway", name): v for name, v in nways.items()})
    cos, cos_other = hline_cosine(net, d.items, d.labels, grid, d.render, layers, device)
    out.update({metrics.invariance_key("cos", name): v for name, v in cos.items()})
    out.update({metrics.invariance_key("cos_other", name): v for name, v in cos_other.items()})
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
