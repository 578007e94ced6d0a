"""Known answers for the metrics, the batched grid evaluation and the shift measurements
(jaggedness, N-way matching, the authors' pre-ReLU horizontal-line cosine)."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from transinv import metrics
from transinv.canvas import Renderer
from transinv.config import ConfigError, from_flat
from transinv.evaluation import (
    accuracy_at,
    balanced_subset,
    positional_consistency,
    random_centres,
)
from transinv.grid import (
    build_grid,
    evaluate_grid,
    other_class_partner,
    preactivation_points,
    preactivations,
    probed,
)
from transinv.metrics import ONE_PIXEL_SHIFTS, jaggedness, nway_accuracy
from transinv.shifts import (
    hline_cosine,
    jaggedness_at,
    nway_at,
    nway_candidates,
    one_pixel_neighbours,
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
    assert torch.allclose(
        metrics.cosines(a[None], metrics.unit_references([a])), torch.ones(5, 1, 1)
    )


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


@pytest.mark.parametrize("size,item", [(32, 16), (64, 16), (224, 50), (28, 16)])
def test_random_centre_pairs_are_one_draw_each_and_far_apart_even_on_a_crowded_canvas(size, item):
    # 32/16: the middle of the valid square has no partner one item away; the rejection loop
    # that drew a first centre there hung the first finetuning evaluation.
    gen = torch.Generator().manual_seed(0)
    a, b = random_centres(300, size, item, gen, min_distance=item)
    lo, hi = item // 2, size - item + item // 2 + 1
    assert bool((torch.hypot(*(a - b).double().T) >= item).all())
    assert bool(((a >= lo) & (a < hi) & (b >= lo) & (b < hi)).all())
    again = random_centres(300, size, item, torch.Generator().manual_seed(0), min_distance=item)
    assert torch.equal(again[0], a) and torch.equal(again[1], b)


def test_random_centres_spread_over_every_valid_pair_partner():
    # The second centre is uniform over the first one's partners: on a 28/16 canvas (valid
    # 8..20) partners of a corner lie in the far corner region; many draws reach most of them.
    gen = torch.Generator().manual_seed(1)
    a, b = random_centres(4000, 28, 16, gen, min_distance=16)
    assert len({tuple(p) for p in a.tolist()}) > 10 and len({tuple(p) for p in b.tolist()}) > 10


def test_no_pair_one_item_apart_is_a_config_error_up_front_and_a_value_error_below():
    with pytest.raises(ConfigError, match="canvas.size.*one item width apart: at least 35"):
        from_flat({"canvas.size": 32, "canvas.item_size": 20, "model.arch": "tiny_cnn"})
    from_flat({"canvas.size": 32, "canvas.item_size": 16, "model.arch": "tiny_cnn"})
    with pytest.raises(ValueError, match="no two centres are 20 px apart"):
        random_centres(4, 32, 20, torch.Generator(), min_distance=20)


def test_positional_consistency_finishes_on_a_32_px_canvas_with_16_px_items():
    items = (torch.rand(6, 16, 16, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    assert positional_consistency(circular_gap_net(), items, Renderer(32), 32, seed=0) == 1.0


# --- jaggedness and N-way accuracy (pure functions) ------------------------------------------


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


def nway_of(anchor: torch.Tensor, same: torch.Tensor, others: torch.Tensor) -> float:
    """nway_accuracy from activations: anchor, same [M, D]; others [M, N - 1, D]."""
    units = metrics.unit_references([anchor])  # [M, D, 1]
    s_same = metrics.cosines(same[None], units)[:, 0, 0]
    s_others = metrics.cosines(others.transpose(0, 1), units)[:, :, 0]  # [M, N - 1]
    return nway_accuracy(s_same, s_others)


def test_identical_copies_are_always_picked():
    g = torch.Generator().manual_seed(1)
    anchor = torch.randn(50, 32, generator=g)
    assert nway_of(anchor, anchor.clone(), torch.randn(50, 9, 32, generator=g)) == 1.0


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
    assert nway_of(anchor, same, others) == pytest.approx((1 + 0 + 0.5 + 1) / 4)


def test_all_zero_activations_score_chance():
    m, n, d = 6, 4, 5
    score = nway_of(torch.zeros(m, d), torch.zeros(m, d), torch.zeros(m, n - 1, d))
    assert score == pytest.approx(1 / n)


def test_random_features_score_near_chance():
    m, n, d = 3000, 5, 64
    g = torch.Generator().manual_seed(2)
    score = nway_of(
        torch.randn(m, d, generator=g),
        torch.randn(m, d, generator=g),
        torch.randn(m, n - 1, d, generator=g),
    )
    chance = 1 / n
    spread = math.sqrt(chance * (1 - chance) / m)  # binomial sd of a mean of m trials
    assert abs(score - chance) < 4 * spread


def test_nway_accuracy_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\[M, N - 1 >= 1\]"):
        nway_accuracy(torch.zeros(3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="same"):
        nway_accuracy(torch.zeros(3, 1), torch.zeros(3, 4))


# --- the shift measurements on a net --------------------------------------------------------


def test_nway_candidates_are_one_item_of_each_of_the_next_classes():
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    cand = nway_candidates(labels, 3)
    assert cand.shape == (7, 2)
    for i, row in enumerate(cand.tolist()):
        classes = labels[row].tolist()
        assert classes == [(labels[i].item() + 1) % 3, (labels[i].item() + 2) % 3]
    assert cand[3].tolist() == [4, 5]  # item 3 is class 0's second: the second of 1 and 2
    with pytest.raises(ValueError, match="eval.nway=4"):
        nway_candidates(labels, 4)


def test_one_pixel_neighbours_stay_inside_the_canvas():
    assert one_pixel_neighbours((16, 16), S, K).tolist() == [[17, 16], [15, 16], [16, 17], [16, 15]]
    lo = K // 2
    assert one_pixel_neighbours((lo, lo), S, K).tolist() == [[lo + 1, lo], [lo, lo + 1]]


def test_an_invariant_net_has_zero_jaggedness_and_matches_every_item():
    items, labels = random_items(12)
    net, g = circular_gap_net(), grid()
    spread = g.untrained_spread(3)
    assert (
        len(spread) == 3
        and g.untrained()[
            np.searchsorted(g.ys, spread[:, 1]), np.searchsorted(g.xs, spread[:, 0])
        ].all()
    )
    for centres in (np.array([g.trained]), spread):
        flips, prob = jaggedness_at(net, items, centres, Renderer(S), "cpu")
        assert flips == 0.0 and prob == pytest.approx(0.0, abs=1e-6)
    nway = nway_at(net, items, labels, g, spread, Renderer(S), ["pool", "logits"], 4, "cpu")
    assert nway == {"pool": 1.0, "logits": 1.0}


def test_a_flatten_linear_net_is_jagged_and_matches_near_chance_after_an_item_width():
    items, labels = random_items(16)
    net, g = flatten_linear_net(), grid()
    flips, prob = jaggedness_at(net, items, np.array([g.trained]), Renderer(S), "cpu")
    assert flips > 0.0 and prob > 0.0
    nway = nway_at(net, items, labels, g, g.untrained_spread(4), Renderer(S), ["pool"], 4, "cpu")
    assert nway["pool"] < 0.75  # chance 0.25; identical copies would score 1


def test_hline_holds_the_grid_columns_an_item_width_away_on_the_trained_row():
    g = build_grid(64, 16, 6 / 64, 0.0, (16, 32), 8)
    assert g.hline().tolist() == [[32, 32], [38, 32], [44, 32], [50, 32], [56, 32]]
    middle = build_grid(32, 16, 2 / 32, 0.0, (16, 16), 8)
    assert middle.hline().shape == (0, 2)


class PreReluNet(ProbeNet):
    """A conv with a bias of -1 and a ReLU probe: its pre-activations are often negative."""

    def __init__(self):
        torch.manual_seed(0)
        conv = nn.Conv2d(1, 4, 3, padding=1, padding_mode="circular")
        nn.init.constant_(conv.bias, -1.0)
        relu = nn.ReLU(inplace=True)  # in place: the probe must copy its input first
        super().__init__(
            nn.Sequential(conv, relu), nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()), 4
        )
        self.probe_layers = {"conv1": relu, "logits": self.head}


def test_preactivations_are_the_relu_input_and_the_logits_output():
    net = PreReluNet()
    x = torch.rand(3, 1, S, S)
    conv = net.features[0]
    points = preactivation_points(net)
    assert points["conv1"] == (net.features[1], True) and points["logits"] == (net.head, False)
    with torch.no_grad(), preactivations(net, ["conv1", "logits"]) as pre:
        logits = net(x)
    with torch.no_grad(), probed(net, ["conv1"]) as post:
        net(x)
    expected = conv(x)
    assert torch.allclose(pre["conv1"], expected.flatten(1), atol=1e-6)
    assert (pre["conv1"] < 0).any() and (post["conv1"] >= 0).all()
    assert torch.equal(pre["logits"], logits)


def test_resnet_stage_preactivation_is_its_last_blocks_final_relu_input():
    import torchvision

    from transinv.models import build_model

    net = build_model("resnet18", 3, 3, 64).eval()
    block = net.features.layer4[-1]
    seen = {}
    hook = block.bn2.register_forward_hook(lambda m, i, o: seen.setdefault("bn2", o))
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad(), preactivations(net, ["conv5"]) as pre:
        net(x)
    hook.remove()
    assert isinstance(block, torchvision.models.resnet.BasicBlock)
    # The final ReLU's input is bn2's output plus the identity: it has negative entries.
    assert (pre["conv5"] < 0).any()
    assert pre["conv5"].shape == seen["bn2"].flatten(1).shape


def test_hline_cosine_is_one_for_an_invariant_net_and_lower_for_a_flatten_one():
    items, labels = random_items(8)
    g = grid(trained=(8, 16))
    assert len(g.hline())
    same, other = hline_cosine(circular_gap_net(), items, labels, g, Renderer(S), ["pool"], "cpu")
    assert same["pool"] == pytest.approx(1.0, abs=1e-5) and other["pool"] < 0.999
    flat, _ = hline_cosine(flatten_linear_net(), items, labels, g, Renderer(S), ["pool"], "cpu")
    assert flat["pool"] < 0.99
    middle = build_grid(S, 16, 2 / S, 0.0, (16, 16), 1)  # no column 16 px from the middle
    middle_lines = hline_cosine(
        circular_gap_net(), items, labels, middle, Renderer(S), ["pool"], "cpu"
    )
    assert len(middle.hline()) == 0 and math.isnan(middle_lines[0]["pool"])


def test_near_centres_are_within_an_item_width_and_not_the_trained_one():
    g = build_grid(64, 16, 4 / 64, 0.0, (16, 32), 8)
    near, untrained = g.near(), g.untrained()
    assert not (near & untrained).any()
    x_index, y_index = list(g.xs).index(16), list(g.ys).index(32)
    assert not near[y_index, x_index] and near[y_index, x_index + 1]
    acc = np.zeros_like(near, dtype=float)
    acc[near] = 0.5
    out = metrics.grid_summary(acc, untrained, g.aligned(), 1.0, 0.1, near)
    assert out[metrics.ACC_NEAR] == 0.5 and out[metrics.ACC_UNTRAINED] == 0.0
