"""Metrics as pure functions on arrays, and every metric key, spelled once.

Keys follow `group/quantity[/layer]`. Curves are logged per evaluation at the phase's own step;
summaries (forgetting) once at the end. Running a network to get the arrays these functions take
lives in `evaluation.py`.

Every invariance score comes with its baseline: I (same item, shifted) beside D (a different item
at the shifted place), because raw cosine of post-ReLU activations is high even for unrelated
inputs. G = (I - D) / (1 - D): 1 = like identical copies, 0 = like an unrelated item.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch

# Pretraining curves (step = pretraining step).
PRETRAIN_LOSS = "pretrain/loss"
PRETRAIN_TRAIN_ACC = "pretrain/train_acc"
PRETRAIN_ACC = "pretrain/acc"
"""Held-out items of the pretraining set under the pretraining regime."""
PRETRAIN_ACC_WHOLE = "pretrain/acc_whole"
"""Held-out items of the pretraining set anywhere on the canvas."""

# Finetuning curves (step = finetuning step; step 0 is before any finetuning).
FINETUNE_LOSS = "finetune/loss"
FINETUNE_TRAIN_ACC = "finetune/train_acc"
ACC_TRAINED = "finetune/acc_trained"
ACC_UNTRAINED = "finetune/acc_untrained"
ACC_UNTRAINED_ALIGNED = "finetune/acc_untrained_aligned"
ACC_UNTRAINED_UNALIGNED = "finetune/acc_untrained_unaligned"
FRAC_UNTRAINED_GE_HALF = "finetune/frac_untrained_ge_0.5"
CHANCE = "finetune/chance"
"""1 / the number of finetuning classes."""
TRANSFER_RATIO = "finetune/transfer_ratio"
CONSISTENCY = "finetune/consistency"
FORGETTING_PRETRAIN_ACC = "forgetting/pretrain_acc"
"""Pretraining task accuracy through the current trunk and the pretraining head, during
finetuning: forgetting of the pretraining set."""

# Grids (arrays, for heatmaps), keyed like metrics.
PRETRAIN_ACC_GRID = "pretrain/acc_grid"
ACC_GRID = "finetune/acc_grid"

# Where a trial's time went (seconds, logged once at the end of the trial; `results.study_cost`
# sums them over a study). Each is `time/<part>_s`: a phase's training steps (`pretrain`,
# `finetune`), `setup` (data and net), `eval` (evaluations), `report` (the on_eval callback: in a
# study the checkpoint and Tune report), `tracking` (the background thread's MLflow calls, which
# overlap training), `tracking_wait` (waiting for them at the end), `pretrain_saved` (a cache
# hit's stored pretraining: what the original trial spent on it).
TIME_PARTS = ("setup", "pretrain", "finetune", "eval", "report", "tracking", "tracking_wait")
TIME_PRETRAIN_SAVED = "time/pretrain_saved_s"


def time_key(part: str) -> str:
    """`time/pretrain_s`, `time/eval_s`, ..."""
    return f"time/{part}_s"


def invariance_key(quantity: str, layer: str) -> str:
    """`invariance/I/conv3`, `invariance/D/fc1`, `invariance/G/logits`."""
    return f"invariance/{quantity}/{layer}"


def g_grid_key(layer: str) -> str:
    return f"invariance/G_grid/{layer}"


def drop_key(key: str) -> str:
    """Summary key of the forgetting of curve `key`: `forgetting/acc_untrained_drop`,
    `forgetting/G_drop/fc1`, `forgetting/pretrain_acc_drop`."""
    return _summary_key(key, "drop")


def peak_step_key(key: str) -> str:
    return _summary_key(key, "peak_step")


def _summary_key(key: str, what: str) -> str:
    parts = key.split("/")
    if parts[0] == "invariance":  # invariance/G/fc1 -> forgetting/G_drop/fc1
        return f"forgetting/{parts[1]}_{what}/{'/'.join(parts[2:])}"
    return f"forgetting/{parts[-1]}_{what}"


def cosine_rows(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Cosine similarity of matching rows. a, b: [N, D] -> [N]. All-zero rows score 0."""
    a = torch.nn.functional.normalize(a.float(), dim=1, eps=eps)
    b = torch.nn.functional.normalize(b.float(), dim=1, eps=eps)
    return (a * b).sum(dim=1)


def unit_references(refs: Sequence[torch.Tensor]) -> torch.Tensor:
    """K reference activations per item, [N, D] each, as unit vectors [N, D, K] for `cosines`
    (normalised once, then compared with the item at every place)."""
    return torch.stack([torch.nn.functional.normalize(r.float(), dim=1) for r in refs], dim=2)


def cosines(acts: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every item's activations at P places with K references of that item
    (for I and D: itself at the trained centre, its other-class partner there).

    acts: [P, N, D] (item n at place p); units: [N, D, K] from `unit_references` -> [N, P, K].
    All-zero vectors score 0. One batched matmul over items gives all K dot products at once.
    """
    acts = acts.float()
    norms = torch.linalg.vector_norm(acts, dim=2).clamp_min(1e-8)  # [P, N]
    return torch.bmm(acts.transpose(0, 1), units) / norms.T[:, :, None]


def g_score(i: np.ndarray | float, d: np.ndarray | float) -> np.ndarray | float:
    """G = (I - D) / (1 - D); NaN where D == 1 (no room above the baseline)."""
    i, d = np.asarray(i, dtype=np.float64), np.asarray(d, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        g = np.where(d < 1.0, (i - d) / (1.0 - d), np.nan)
    return g if g.ndim else float(g)


def transfer_ratio(acc_trained: float, acc_untrained: float, chance: float) -> float:
    """(acc@untrained - chance) / (acc@trained - chance); NaN when acc@trained <= chance."""
    if acc_trained <= chance:
        return math.nan
    return (acc_untrained - chance) / (acc_trained - chance)


def untrained_mask(xs: np.ndarray, ys: np.ndarray, trained: tuple[int, int], item_size: int):
    """[Gy, Gx] bool: grid centres at Euclidean distance >= one item width from the trained one."""
    dx = xs[None, :] - trained[0]
    dy = ys[:, None] - trained[1]
    return np.hypot(dx, dy) >= item_size


def aligned_mask(xs: np.ndarray, ys: np.ndarray, trained: tuple[int, int], stride: int):
    """[Gy, Gx] bool: centres whose offset from the trained one is a multiple of the total
    stride on both axes (pooling makes a net nearly invariant to exactly those shifts)."""
    return ((ys[:, None] - trained[1]) % stride == 0) & ((xs[None, :] - trained[0]) % stride == 0)


def grid_summary(
    acc_grid: np.ndarray,
    untrained: np.ndarray,
    aligned: np.ndarray,
    acc_trained: float,
    chance: float,
) -> dict[str, float]:
    """Accuracy over the canvas from a grid A[y, x] and masks of the same shape."""

    def mean(mask: np.ndarray) -> float:
        return float(acc_grid[mask].mean()) if mask.any() else math.nan

    acc_untrained = mean(untrained)
    return {
        CHANCE: chance,
        ACC_TRAINED: acc_trained,
        ACC_UNTRAINED: acc_untrained,
        ACC_UNTRAINED_ALIGNED: mean(untrained & aligned),
        ACC_UNTRAINED_UNALIGNED: mean(untrained & ~aligned),
        FRAC_UNTRAINED_GE_HALF: float((acc_grid[untrained] >= 0.5).mean())
        if untrained.any()
        else math.nan,
        TRANSFER_RATIO: transfer_ratio(acc_trained, acc_untrained, chance),
    }


def invariance_summary(
    i_grids: Mapping[str, np.ndarray], d_grids: Mapping[str, np.ndarray], mask: np.ndarray
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Per layer I, D and G averaged over the masked centres, plus G per centre for heatmaps.

    i_grids, d_grids: layer -> [Gy, Gx] mean cosine at each centre.
    """
    scalars: dict[str, float] = {}
    grids: dict[str, np.ndarray] = {}
    for layer, i_grid in i_grids.items():
        i_mean = float(i_grid[mask].mean()) if mask.any() else math.nan
        d_mean = float(d_grids[layer][mask].mean()) if mask.any() else math.nan
        scalars[invariance_key("I", layer)] = i_mean
        scalars[invariance_key("D", layer)] = d_mean
        scalars[invariance_key("G", layer)] = g_score(i_mean, d_mean)
        grids[g_grid_key(layer)] = np.asarray(g_score(i_grid, d_grids[layer]), dtype=np.float32)
    return scalars, grids


def forgetting(curve: Mapping[int, float]) -> tuple[float, int]:
    """(max m - final m, step of the max) of a curve {step: value}; NaN values are ignored."""
    points = [(s, v) for s, v in sorted(curve.items()) if not math.isnan(v)]
    if not points:
        return math.nan, -1
    peak_step, peak = max(points, key=lambda p: (p[1], -p[0]))
    return peak - points[-1][1], peak_step


def forgetting_summary(curves: Mapping[str, Mapping[int, float]]) -> dict[str, float]:
    """Drop and peak step for every curve given."""
    out: dict[str, float] = {}
    for key, curve in curves.items():
        drop, step = forgetting(curve)
        out[drop_key(key)] = drop
        out[peak_step_key(key)] = float(step)
    return out


def invariance_parts(key: str) -> tuple[str, str] | None:
    """(quantity, layer) of an invariance key: `invariance/G/fc1` -> ("G", "fc1"),
    `invariance/G_grid/fc1` -> ("G_grid", "fc1"); None for any other key."""
    parts = key.split("/", 2)
    if len(parts) != 3 or parts[0] != "invariance" or not parts[2]:
        return None
    return parts[1], parts[2]


def layers_of(keys: Iterable[str], quantity: str = "G") -> dict[str, str]:
    """Key -> layer for the per-layer `quantity` keys among `keys` (metrics, columns), in order."""
    found = ((key, invariance_parts(key)) for key in keys)
    return {key: parts[1] for key, parts in found if parts and parts[0] == quantity}


def grid_column(key: str) -> str:
    """The column of a grid key in the final-grid table: `invariance/G_grid/fc1` -> `G/fc1`."""
    parts = invariance_parts(key)
    return f"G/{parts[1]}" if parts and parts[0] == "G_grid" else key
