"""Two of the field's measures of shift sensitivity, as pure functions on tensors: jaggedness
(Azulay & Weiss 2019) and N-way similarity matching (Biscione & Bowers' later protocol).

These are meant to join `metrics.py` (cut and paste); they take the network's outputs, never the
network. Placing items, running the net and choosing centres belong to `evaluation.py`; the
metric keys (`finetune/jaggedness`, `invariance/nway/<layer>`) are spelled in `metrics.py`.

- **Jaggedness** (Azulay & Weiss 2019, "Why do deep convolutional networks generalize so poorly
  to small image transformations?", JMLR 20(184)): how often the top-1 class changes when an item
  moves by one pixel, and how much the probability of that class changes. The one-pixel moves
  are the four neighbours of the centre, `ONE_PIXEL_SHIFTS` (+x, -x, +y, -y), so that a net
  whose stride favours one direction is not scored on the lucky one alone.
- **N-way accuracy**: an item's activation at the trained centre (the anchor) is compared by
  cosine similarity with N candidates at an untrained centre, the same item and N - 1 items of
  other classes; the score is the fraction of anchors whose most similar candidate is the same
  item. Chance is 1 / N. Unlike the raw cosine I, it carries its own baseline.
"""

from __future__ import annotations

import torch

from transinv.metrics import cosine_rows

ONE_PIXEL_SHIFTS: tuple[tuple[int, int], ...] = ((1, 0), (-1, 0), (0, 1), (0, -1))
"""(dx, dy) in pixels: the four one-pixel neighbours over which jaggedness averages."""


def jaggedness(logits_at: torch.Tensor, logits_shifted: torch.Tensor) -> tuple[float, float]:
    """(P(top-1 changes), mean |change of the top-class probability|) under one-pixel moves.

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


def nway_accuracy(anchor: torch.Tensor, same: torch.Tensor, others: torch.Tensor) -> float:
    """Fraction of anchors whose most cosine-similar of N candidates is the same item.

    anchor: [M, D], M items at the trained centre (one layer's activations, flattened).
    same: [M, D], the same items at an untrained centre.
    others: [M, N - 1, D], per anchor N - 1 items of other classes at that untrained centre.
    A tie between the same item and t others counts 1 / (1 + t), the expected score of picking
    at random among the tied, so all-zero activations score chance, 1 / N, not 1 or 0.
    """
    if anchor.ndim != 2 or same.shape != anchor.shape:
        raise ValueError(
            f"nway_accuracy takes anchor and same [M, D] of one shape, got "
            f"{tuple(anchor.shape)} and {tuple(same.shape)}"
        )
    m, d = anchor.shape
    if others.ndim != 3 or others.shape[0] != m or others.shape[2] != d or others.shape[1] == 0:
        raise ValueError(
            f"others {tuple(others.shape)} must be [{m}, N - 1 >= 1, {d}] to match anchor"
        )
    n_others = others.shape[1]
    s_same = cosine_rows(anchor, same)  # [M]
    s_others = cosine_rows(
        anchor[:, None, :].expand(-1, n_others, -1).reshape(-1, d), others.reshape(-1, d)
    ).reshape(m, n_others)
    beaten = (s_others > s_same[:, None]).any(dim=1)
    ties = (s_others == s_same[:, None]).sum(dim=1)
    score = torch.where(beaten, 0.0, 1.0 / (1.0 + ties.double()))
    return float(score.mean())


__all__ = ["ONE_PIXEL_SHIFTS", "jaggedness", "nway_accuracy"]
