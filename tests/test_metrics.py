"""Known answers for the metrics and the batched grid evaluation."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from transinv import metrics
from transinv.canvas import Renderer
from transinv.evaluation import (
    accuracy_at,
    balanced_subset,
    build_grid,
    evaluate_grid,
    other_class_partner,
    positional_consistency,
    random_centres,
)

S, K = 32, 8


class ProbeNet(nn.Module):
    """features -> pool -> classifier -> head, with probe layers, like transinv.models.Net."""

    def __init__(self, features: nn.Module, pool: nn.Module, width: int, classes: int = 4):
        super().__init__()
        self.features, self.pool = features, pool
        self.classifier = nn.Identity()
        self.head = nn.Linear(width, classes)
        self.probe_layers = {"pool": self.pool, "logits": self.head}

    def forward(self, x):
        return self.head(self.classifier(self.pool(self.features(x))))


def circular_gap_net() -> ProbeNet:
    """Stride-1 circular conv + ReLU + global average pooling: exactly invariant to circular
    shifts, and moving an item on a black canvas is one."""
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 8, 3, padding=1, padding_mode="circular", bias=False)
    return ProbeNet(
        nn.Sequential(conv, nn.ReLU()), nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()), 8
    )


def flatten_linear_net() -> ProbeNet:
    torch.manual_seed(0)
    pool = nn.Sequential(nn.Flatten(), nn.Linear(S * S, 32), nn.ReLU())
    return ProbeNet(nn.Identity(), pool, 32)


def random_items(n: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    items = (torch.rand(n, K, K, generator=gen) > 0.6).float()
    return items, torch.arange(n) % 4


def grid(trained=(16, 16), stride=1):
    return build_grid(S, K, step=2 / S, offset=0.0, trained=trained, stride=stride)


def test_global_average_pooling_of_a_raw_canvas_is_exactly_invariant():
    items, labels = random_items()
    g = grid()
    result = evaluate_grid(circular_gap_net(), items, labels, g, Renderer(S), ["pool"])
    assert np.allclose(result.i_grids["pool"], 1.0, atol=1e-5)
    assert (result.d_grids["pool"] < 0.999).all()
    scores, g_grids = metrics.invariance_summary(result.i_grids, result.d_grids, g.untrained())
    assert scores["invariance/G/pool"] == pytest.approx(1.0, abs=1e-4)
    assert np.allclose(g_grids["invariance/G_grid/pool"], 1.0, atol=1e-4)
    # Invariant logits: the prediction is the same everywhere, so accuracy is flat.
    assert np.allclose(result.acc, result.acc_trained)


def test_a_random_flatten_linear_layer_is_not_invariant():
    items, labels = random_items()
    g = grid()
    result = evaluate_grid(flatten_linear_net(), items, labels, g, Renderer(S), ["pool"])
    scores, _ = metrics.invariance_summary(result.i_grids, result.d_grids, g.untrained())
    assert scores["invariance/G/pool"] < 0.5
    assert scores["invariance/I/pool"] < 0.99


def test_g_of_an_input_against_itself_is_one():
    items, labels = random_items()
    one_point = build_grid(S, K, step=1.0, offset=(16 - K // 2) / S, trained=(16, 16), stride=1)
    assert one_point.centres().tolist() == [[16, 16]]
    result = evaluate_grid(flatten_linear_net(), items, labels, one_point, Renderer(S), ["pool"])
    assert result.i_grids["pool"][0, 0] == pytest.approx(1.0, abs=1e-6)
    assert metrics.g_score(1.0, 0.3) == 1.0
    a = torch.randn(5, 7)
    assert torch.allclose(metrics.cosine_rows(a, a), torch.ones(5))


def test_cosines_of_every_place_with_every_reference_of_the_same_item():
    """The functions evaluate_grid scores I and D with, against a per-pair computation."""
    gen = torch.Generator().manual_seed(0)
    acts = torch.randn(3, 4, 6, generator=gen)  # 3 places, 4 items, 6 units
    acts[1, 2] = 0.0  # an all-zero activation scores 0, not NaN
    refs = [torch.randn(4, 6, generator=gen), torch.randn(4, 6, generator=gen)]
    refs[1][3] = 0.0
    refs[0][0] = 2.5 * acts[2, 0]  # same direction: cosine 1 whatever the scale
    out = metrics.cosines(acts, metrics.unit_references(refs))
    assert out.shape == (4, 3, 2)
    for p in range(3):
        for n in range(4):
            for k in range(2):
                expected = torch.nn.functional.cosine_similarity(acts[p, n], refs[k][n], dim=0)
                assert float(out[n, p, k]) == pytest.approx(float(expected), abs=1e-6)
    assert float(out[0, 2, 0]) == pytest.approx(1.0, abs=1e-6)
    assert float(out[2, 1, 0]) == 0.0 and float(out[3, 0, 1]) == 0.0
    units = metrics.unit_references(refs)
    assert float(metrics.cosines(-refs[0][None], units)[0, 0, 0]) == pytest.approx(-1.0)


def test_batched_grid_matches_one_location_at_a_time():
    items, labels = random_items()
    net = flatten_linear_net()
    g = grid()
    result = evaluate_grid(net, items, labels, g, Renderer(S), ["pool"])
    for (x, y), acc in zip(g.centres()[::7], result.acc.ravel()[::7], strict=True):
        centres = torch.tensor([[x, y]]).repeat(len(items), 1)
        single, _ = accuracy_at(net, items, labels, centres, Renderer(S))
        assert single == pytest.approx(acc)


def test_grid_records_stride_alignment_and_untrained_centres():
    g = build_grid(64, 16, step=4 / 64, offset=0.0, trained=(16, 32), stride=8)
    assert len(g.xs) == 13 and g.xs[0] == 8 and g.xs[-1] == 56
    assert not g.step_aligned
    assert build_grid(64, 16, 8 / 64, 0.0, (16, 32), 8).step_aligned
    untrained = g.untrained()
    x_index, y_index = list(g.xs).index(16), list(g.ys).index(32)
    assert not untrained[y_index, x_index]
    assert untrained[0, -1]
    aligned = g.aligned()
    assert aligned[y_index, x_index] and not aligned[y_index, x_index + 1]


def test_grid_summary_known_answer():
    acc = np.array([[1.0, 0.5], [0.25, 0.0]])
    untrained = np.array([[False, True], [True, True]])
    aligned = np.array([[True, True], [False, False]])
    out = metrics.grid_summary(acc, untrained, aligned, acc_trained=1.0, chance=0.25)
    assert out[metrics.ACC_UNTRAINED] == pytest.approx(0.25)
    assert out[metrics.ACC_UNTRAINED_ALIGNED] == pytest.approx(0.5)
    assert out[metrics.ACC_UNTRAINED_UNALIGNED] == pytest.approx(0.125)
    assert out[metrics.FRAC_UNTRAINED_GE_HALF] == pytest.approx(1 / 3)
    assert out[metrics.TRANSFER_RATIO] == pytest.approx(0.0)


def test_transfer_ratio_is_nan_at_or_below_chance():
    assert math.isnan(metrics.transfer_ratio(0.1, 0.1, 0.1))
    assert metrics.transfer_ratio(1.0, 0.55, 0.1) == pytest.approx(0.5)


def test_forgetting_is_peak_minus_final():
    drop, step = metrics.forgetting({0: 0.2, 100: 0.6, 200: 0.5, 300: 0.3})
    assert drop == pytest.approx(0.3) and step == 100
    assert metrics.forgetting({0: 0.2, 100: 0.4}) == (0.0, 100)
    summary = metrics.forgetting_summary({"invariance/G/fc1": {0: 0.9, 10: 0.4}})
    assert summary == {"forgetting/G_drop/fc1": pytest.approx(0.5), "forgetting/G_peak_step/fc1": 0}
    assert metrics.drop_key(metrics.ACC_UNTRAINED) == "forgetting/acc_untrained_drop"
    assert metrics.drop_key(metrics.FORGETTING_PRETRAIN_ACC) == "forgetting/pretrain_acc_drop"


def test_d_baseline_pairs_items_of_different_classes():
    labels = torch.tensor([0, 0, 1, 1, 2])
    perm = other_class_partner(labels)
    assert sorted(perm.tolist()) == list(range(5))
    assert bool((labels[perm] != labels).all())
    with pytest.raises(ValueError, match="two classes"):
        other_class_partner(torch.zeros(3, dtype=torch.long))


def test_balanced_subset_round_robins_over_classes():
    labels = torch.tensor([0] * 5 + [1] * 5 + [2] * 2)
    subset = balanced_subset(labels, 7)
    assert labels[subset].tolist() == [0, 1, 2, 0, 1, 2, 0]


def test_random_centre_pairs_are_far_enough_apart():
    gen = torch.Generator().manual_seed(0)
    a, b = random_centres(500, 64, 16, gen, min_distance=16)
    assert bool((torch.hypot(*(a - b).double().T) >= 16).all())


def test_positional_consistency_is_one_for_an_invariant_net():
    items, _ = random_items()
    assert positional_consistency(circular_gap_net(), items, Renderer(S), S, seed=0) == 1.0
