"""Known answers for jaggedness and N-way accuracy (transinv/shift_metrics.py)."""

from __future__ import annotations

import math

import pytest
import torch

from transinv.shift_metrics import ONE_PIXEL_SHIFTS, jaggedness, nway_accuracy


def test_one_pixel_shifts_are_the_four_neighbours():
    assert sorted(ONE_PIXEL_SHIFTS) == [(-1, 0), (0, -1), (0, 1), (1, 0)]


def test_identical_logits_have_zero_jaggedness():
    logits = torch.randn(16, 10, generator=torch.Generator().manual_seed(0))
    flips, change = jaggedness(logits, logits.expand(4, -1, -1))
    assert flips == 0.0
    assert change == 0.0


def test_planted_changes_give_the_exact_jaggedness():
    p = torch.tensor([0.5, 0.3, 0.2])
    at = p.log().expand(4, -1).clone()  # 4 items, top class 0 with probability 0.5
    shifted = at.expand(2, -1, -1).clone()  # 2 moves: 8 (move, item) pairs
    shifted[0, 1] = torch.tensor([0.2, 0.3, 0.5]).log()  # flips to class 2; p(class 0) -0.3
    shifted[1, 3] = torch.tensor([0.4, 0.35, 0.25]).log()  # stays class 0; p(class 0) -0.1
    flips, change = jaggedness(at, shifted)
    assert flips == pytest.approx(1 / 8)
    assert change == pytest.approx((0.3 + 0.1) / 8)


def test_jaggedness_tracks_the_top_class_at_the_centre_not_the_shifted_one():
    at = torch.tensor([[0.7, 0.2, 0.1]]).log()
    shifted = torch.tensor([[[0.1, 0.2, 0.7]]]).log()  # same top probability, other class
    flips, change = jaggedness(at, shifted)
    assert flips == 1.0
    assert change == pytest.approx(0.6)


def test_jaggedness_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\[K >= 1, 4, 3\]"):
        jaggedness(torch.zeros(4, 3), torch.zeros(2, 5, 3))
    with pytest.raises(ValueError, match="logits_at"):
        jaggedness(torch.zeros(4, 3), torch.zeros(4, 3))


def test_identical_copies_are_always_picked():
    g = torch.Generator().manual_seed(1)
    anchor = torch.randn(50, 32, generator=g)
    others = torch.randn(50, 9, 32, generator=g)
    assert nway_accuracy(anchor, anchor.clone(), others) == 1.0


def test_planted_candidates_give_the_exact_nway_accuracy():
    e = torch.eye(3)
    anchor = torch.stack([e[0], e[0], e[0], e[1]])
    same = torch.stack([e[0], e[0] + e[1], 2 * e[0], e[1] + e[2]])
    others = torch.stack(
        [
            torch.stack([e[1], e[2]]),  # same item wins (cos 1 vs 0): 1
            torch.stack([e[1], e[0] + 0.1 * e[1]]),  # an other is closer (0.995 > 0.707): 0
            torch.stack([3 * e[0], e[1]]),  # tie at cos 1 with one other: 1/2
            torch.stack([e[0], e[2]]),  # 0.707 beats 0 and 0: 1
        ]
    )
    assert nway_accuracy(anchor, same, others) == pytest.approx((1 + 0 + 0.5 + 1) / 4)


def test_all_zero_activations_score_chance():
    m, n, d = 6, 4, 5
    assert nway_accuracy(torch.zeros(m, d), torch.zeros(m, d), torch.zeros(m, n - 1, d)) == (
        pytest.approx(1 / n)
    )


def test_random_features_score_near_chance():
    m, n, d = 3000, 5, 64
    g = torch.Generator().manual_seed(2)
    score = nway_accuracy(
        torch.randn(m, d, generator=g),
        torch.randn(m, d, generator=g),
        torch.randn(m, n - 1, d, generator=g),
    )
    chance = 1 / n
    spread = math.sqrt(chance * (1 - chance) / m)  # binomial sd of a mean of m trials
    assert abs(score - chance) < 4 * spread


def test_nway_accuracy_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\[3, N - 1 >= 1, 8\]"):
        nway_accuracy(torch.zeros(3, 8), torch.zeros(3, 8), torch.zeros(3, 4, 7))
    with pytest.raises(ValueError, match="same"):
        nway_accuracy(torch.zeros(3, 8), torch.zeros(2, 8), torch.zeros(3, 4, 8))
