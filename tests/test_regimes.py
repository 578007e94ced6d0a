"""Placement under every regime: centres stay in the valid range and match the pixels."""

import pytest
import torch

from transinv.canvas import paste
from transinv.config import ConfigError
from transinv.regimes import (
    REGIMES,
    Placement,
    build_sampler,
    class_cells,
    parse_class_regimes,
    translation_box,
    valid_range,
)

S, K, C, N = 64, 16, 10, 200


def placement(**kw) -> Placement:
    return Placement(size=S, item_size=K, num_classes=C, num_items=N, **kw)


def draw(regime: str, n: int = 2000, seed: int = 0, **kw):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % C
    items = torch.arange(n) % N
    return build_sampler(regime, placement(**kw))(labels, items, gen), labels, items


def test_valid_range_matches_paper():
    assert valid_range(64, 16) == (8, 57)
    assert valid_range(224, 50) == (25, 200)


@pytest.mark.parametrize("regime", sorted(REGIMES))
def test_every_regime_keeps_items_inside_the_canvas(regime):
    centres, _, _ = draw(regime)
    lo, hi = valid_range(S, K)
    assert centres.dtype == torch.int64 and centres.shape == (2000, 2)
    assert int(centres.min()) >= lo and int(centres.max()) < hi


@pytest.mark.parametrize("regime", sorted(REGIMES))
def test_recorded_centres_match_the_pixels(regime):
    centres, _, _ = draw(regime, n=50)
    canvases = paste(torch.ones(50, K, K), centres, S)
    assert canvases.shape == (50, 1, S, S)
    for canvas, (x, y) in zip(canvases[:, 0], centres.tolist(), strict=True):
        rows = torch.nonzero(canvas.sum(1)).flatten()
        cols = torch.nonzero(canvas.sum(0)).flatten()
        assert (int(rows[0]), int(rows[-1]) + 1) == (y - K // 2, y - K // 2 + K)
        assert (int(cols[0]), int(cols[-1]) + 1) == (x - K // 2, x - K // 2 + K)
        assert float(canvas.sum()) == K * K


def test_whole_covers_the_valid_range():
    centres, _, _ = draw("whole", n=20000)
    lo, hi = valid_range(S, K)
    assert set(centres[:, 0].tolist()) == set(range(lo, hi))


def test_location_is_one_point_from_canvas_fractions():
    centres, _, _ = draw("location", location=(0.25, 0.5))
    assert torch.equal(centres.unique(dim=0), torch.tensor([[16, 32]]))


def test_translation_range_grows_from_one_point_to_whole():
    lo, hi = valid_range(S, K)
    assert translation_box(placement(translation=1.0)) == ((lo, hi), (lo, hi))
    centres, _, _ = draw("translation", translation=0.0)
    assert len(centres.unique(dim=0)) == 1
    widths = []
    for r in (0.0, 0.25, 0.5, 0.75, 1.0):
        (x0, x1), _ = translation_box(placement(translation=r))
        widths.append(x1 - x0)
    assert widths == sorted(widths) and widths[0] == 1 and widths[-1] == hi - lo
    half, _, _ = draw("translation", translation=0.5)
    assert half[:, 0].max() - half[:, 0].min() + 1 == widths[2]


def test_translation_box_is_clipped_to_the_valid_range():
    (x0, x1), (y0, y1) = translation_box(placement(translation=0.5, location=(0.0, 1.0)))
    lo, hi = valid_range(S, K)
    assert x0 == lo and y1 == hi and x1 > x0 and y1 > y0


def test_class_region_puts_each_class_in_its_own_cell():
    centres, labels, _ = draw("class_region")
    cells = class_cells(placement())
    for cls in range(C):
        (x0, x1), (y0, y1) = cells[cls].tolist()
        mine = centres[labels == cls]
        assert bool(((mine[:, 0] >= x0) & (mine[:, 0] < x1)).all())
        assert bool(((mine[:, 1] >= y0) & (mine[:, 1] < y1)).all())
    # Cells do not overlap: the centre of each class's box is in no other box.
    boxes = [tuple(map(tuple, c)) for c in cells.tolist()]
    assert len(set(boxes)) == C


def test_exemplar_location_pins_each_exemplar_and_mixes_classes():
    a, _, items = draw("exemplar_location", seed=1)
    b, _, _ = draw("exemplar_location", seed=2)
    assert torch.equal(a, b)  # pins do not depend on the sampling stream
    for item in range(5):
        assert len(a[items == item].unique(dim=0)) == 1
    assert len(a.unique(dim=0)) > N // 2
    other, _, _ = draw("exemplar_location", pin_seed=3)
    assert not torch.equal(a, other)


def test_left_right_and_hline():
    left, _, _ = draw("left")
    right, _, _ = draw("right")
    line, _, _ = draw("hline")
    assert int(left[:, 0].max()) < S // 2 <= int(right[:, 0].min())
    assert set(line[:, 1].tolist()) == {S // 2}


def test_per_class_mapping_overrides_the_default():
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(1000) % C
    sample = build_sampler("left", placement(), parse_class_regimes("0=right, 3=hline"))
    centres = sample(labels, labels, gen)
    assert int(centres[labels == 0][:, 0].min()) >= S // 2
    assert set(centres[labels == 3][:, 1].tolist()) == {S // 2}
    assert int(centres[labels == 5][:, 0].max()) < S // 2


def test_sampling_is_deterministic_for_a_generator_seed():
    assert torch.equal(draw("whole", seed=4)[0], draw("whole", seed=4)[0])
    assert not torch.equal(draw("whole", seed=4)[0], draw("whole", seed=5)[0])


@pytest.mark.parametrize("text", ["0:left", "x=left", "0=diagonal"])
def test_bad_class_regimes_name_the_problem(text):
    with pytest.raises(ConfigError, match="class_regimes|diagonal"):
        parse_class_regimes(text)


def test_class_outside_the_set_is_refused():
    with pytest.raises(ConfigError, match="outside"):
        build_sampler("whole", placement(), {12: "left"})


# The Placement field each config key of a regime's `uses` fact sets (trainer.placement).
USES_FIELD = {
    "pretrain.location": ("location", (0.3, 0.7)),
    "pretrain.translation": ("translation", 0.4),
    "data.seed": ("pin_seed", 5),
}


@pytest.mark.parametrize("regime", sorted(REGIMES))
def test_the_uses_fact_lists_exactly_the_keys_that_move_a_regimes_centres(regime):
    uses = REGIMES.facts(regime)["uses"]
    assert set(uses) <= set(USES_FIELD)
    base, _, _ = draw(regime, n=500, location=(0.5, 0.5), translation=0.8, pin_seed=0)
    for key, (name, value) in USES_FIELD.items():
        moved, _, _ = draw(
            regime,
            n=500,
            **{"location": (0.5, 0.5), "translation": 0.8, "pin_seed": 0, name: value},
        )
        assert (not torch.equal(moved, base)) == (key in uses), key
