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
ACC_NEAR = "finetune/acc_near"
"""Mean over grid centres closer than one item width to the trained one, itself excluded: local
invariance (shifts below an item width)."""
JAGGEDNESS = "finetune/jaggedness"
"""P(top-1 class changes) when an item at the trained centre moves by one pixel (Azulay & Weiss
2019), over the four one-pixel moves (`ONE_PIXEL_SHIFTS`) and the held-out items."""
JAGGEDNESS_UNTRAINED = "finetune/jaggedness_untrained"
"""The same, averaged over `eval.shift_centres` untrained grid centres."""
JAGGEDNESS_PROB = "finetune/jaggedness_prob"
"""Mean |change| of the top class's softmax probability under the same one-pixel moves."""
JAGGEDNESS_PROB_UNTRAINED = "finetune/jaggedness_prob_untrained"
NWAY_CHANCE = "finetune/nway_chance"
"""1 / `eval.nway`: chance of `invariance/nway/<layer>`."""
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
    """`invariance/I/conv3`, `invariance/D/fc1`, `invariance/G/logits`; also `nway` (N-way
    matching accuracy), `cos` (the authors' pre-ReLU cosine along the horizontal line) and
    `cos_other` (its different-item baseline)."""
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


def near_mask(xs: np.ndarray, ys: np.ndarray, trained: tuple[int, int], item_size: int):
    """[Gy, Gx] bool: grid centres closer than one item width to the trained one, not itself."""
    d = np.hypot(xs[None, :] - trained[0], ys[:, None] - trained[1])
    return (d > 0) & (d < item_size)


def grid_summary(
    acc_grid: np.ndarray,
    untrained: np.ndarray,
    aligned: np.ndarray,
    acc_trained: float,
    chance: float,
    near: np.ndarray | None = None,
) -> dict[str, float]:
    """Accuracy over the canvas from a grid A[y, x] and masks of the same shape (`near`, when
    given, adds `finetune/acc_near`)."""

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
    } | ({ACC_NEAR: mean(near)} if near is not None else {})


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


ONE_PIXEL_SHIFTS: tuple[tuple[int, int], ...] = ((1, 0), (-1, 0), (0, 1), (0, -1))
"""(dx, dy) in pixels: the four one-pixel neighbours over which jaggedness averages, so that a
net whose stride favours one direction is not scored on the lucky one alone."""


def jaggedness(logits_at: torch.Tensor, logits_shifted: torch.Tensor) -> tuple[float, float]:
    """(P(top-1 changes), mean |change of the top-class probability|) under one-pixel moves
    (Azulay & Weiss 2019, "Why do deep convolutional networks generalize so poorly to small
    image transformations?").

    logits_at: [N, C], N items at a centre c. logits_shifted: [K, N, C], the same items at K
    one-pixel neighbours of c (`ONE_PIXEL_SHIFTS`, K = 4). Over all K * N (item, move) pairs:
    the fraction whose argmax differs from the argmax at c (ties: the first maximal class), and
    the mean of |softmax(at)[t] - softmax(shifted)[t]| with t the top-1 class at c. Both are 0
    for a net whose output does not move. Average over centres by calling it per centre.
    """
    if logits_at.ndim != 2 or logits_shifted.ndim != 3:
        raise ValueError(
            f"jaggedness takes logits_at [N, C] and logits_shifted [K, N, C], got "
            f"{tuple(logits_at.shape)} and {tuple(logits_shifted.shape)}"
        )
    if logits_shifted.shape[1:] != logits_at.shape or logits_shifted.shape[0] == 0:
        raise ValueError(
            f"logits_shifted {tuple(logits_shifted.shape)} must be [K >= 1, "
            f"{', '.join(map(str, logits_at.shape))}] to match logits_at"
        )
    at = logits_at.double()
    shifted = logits_shifted.double()
    top = at.argmax(dim=1)  # [N]
    flips = shifted.argmax(dim=2) != top  # [K, N]
    p_at = at.softmax(dim=1).gather(1, top[:, None])[:, 0]  # [N]
    p_shifted = shifted.softmax(dim=2).gather(2, top.expand(len(shifted), -1)[..., None])[..., 0]
    return float(flips.double().mean()), float((p_shifted - p_at).abs().mean())


def nway_accuracy(same: torch.Tensor, others: torch.Tensor) -> float:
    """N-way matching (Biscione & Bowers' later protocol): the fraction of anchors (items at
    the trained centre) whose most similar of N candidates at an untrained centre is the same
    item. Chance is 1 / N; unlike the raw cosine it carries its own baseline.

    same: [M], similarity (cosine, at one layer) of each anchor with the same item there.
    others: [M, N - 1], with N - 1 items of other classes there.
    A tie between the same item and t others counts 1 / (1 + t), the expected score of picking
    at random among the tied, so all-equal similarities (all-zero activations) score chance.
    """
    if same.ndim != 1 or others.ndim != 2 or others.shape[0] != len(same) or not others.shape[1]:
        raise ValueError(
            f"nway_accuracy takes same [M] and others [M, N - 1 >= 1], got "
            f"{tuple(same.shape)} and {tuple(others.shape)}"
        )
    same, others = same.double(), others.double()
    beaten = (others > same[:, None]).any(dim=1)
    ties = (others == same[:, None]).sum(dim=1)
    score = torch.where(beaten, 0.0, 1.0 / (1.0 + ties.double()))
    return float(score.mean())


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
