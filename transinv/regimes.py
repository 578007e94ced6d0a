"""Translation regimes: where on the canvas each item's centre may fall.

S = canvas side, k = item side, h = k // 2. An item centred at (x, y) covers columns
[x - h, x - h + k) and rows [y - h, y - h + k), so it lies fully inside the canvas iff x and y
are in the valid range V = [h, S - k + h + 1). Every regime draws integer centres inside V;
configs give positions as canvas fractions (`to_pixel` rounds and clips them to V).

Each regime registers into `REGIMES` (`transinv/choices.py`) under its function's name, with
the fact `uses`: the config keys, besides the canvas and the item set, that change its centres.
Pasting items on canvases, and drawing which items to paste, live in `canvas.py`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from transinv.choices import REGIMES
from transinv.config import ConfigError, Point, check_choice, class_regime_pairs


@dataclass(frozen=True)
class Placement:
    """What a regime needs to know about the canvas and the item set."""

    size: int
    item_size: int
    num_classes: int
    num_items: int
    location: Point = (0.5, 0.5)
    translation: float = 1.0
    pin_seed: int = 0
    """Seed of the per-exemplar centres of `exemplar_location` (a data seed: stimuli, not
    training)."""

    @property
    def lo(self) -> int:
        return self.item_size // 2

    @property
    def hi(self) -> int:
        """Exclusive upper bound of valid centres."""
        return self.size - self.item_size + self.item_size // 2 + 1


def valid_range(size: int, item_size: int) -> tuple[int, int]:
    """Half-open range [lo, hi) of centres that keep a k-pixel item inside an S-pixel canvas."""
    return item_size // 2, size - item_size + item_size // 2 + 1


def to_pixel(fraction: float, size: int, item_size: int) -> int:
    """A canvas fraction as an integer centre, rounded and clipped to the valid range."""
    lo, hi = valid_range(size, item_size)
    return min(max(round(fraction * size), lo), hi - 1)


def point_to_pixel(point: Point, size: int, item_size: int) -> tuple[int, int]:
    return to_pixel(point[0], size, item_size), to_pixel(point[1], size, item_size)


Regime = Callable[[Placement, torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]
"""(placement, labels [B], item indices [B], generator) -> centres [B, 2] int64 as (x, y)."""


def uniform_int(low: torch.Tensor, high: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One integer uniform on [low, high) per element, for per-element bounds. low, high: [B]."""
    u = torch.rand(low.shape, generator=gen, dtype=torch.float64)
    return (low + (u * (high - low)).floor().long()).clamp(max=high - 1)


def _box(x: tuple[int, int], y: tuple[int, int], batch: int, gen: torch.Generator) -> torch.Tensor:
    lo = torch.tensor([x[0], y[0]]).expand(batch, 2)
    hi = torch.tensor([x[1], y[1]]).expand(batch, 2)
    return uniform_int(lo, hi, gen)


@REGIMES.register(uses=())
def whole(p: Placement, labels: torch.Tensor, items: torch.Tensor, gen: torch.Generator):
    """Anywhere: centres uniform over the valid range V x V."""
    return _box((p.lo, p.hi), (p.lo, p.hi), len(labels), gen)


@REGIMES.register(uses=("pretrain.location",))
def location(p: Placement, labels: torch.Tensor, items: torch.Tensor, gen: torch.Generator):
    """One point: every centre at `pretrain.location`."""
    x, y = point_to_pixel(p.location, p.size, p.item_size)
    return torch.tensor([x, y]).repeat(len(labels), 1)


def translation_box(p: Placement) -> tuple[tuple[int, int], tuple[int, int]]:
    """Half-open x and y ranges of regime `translation`: side r * |V| around the chosen point,
    clipped to V, never empty."""
    side = p.translation * (p.hi - p.lo)
    ranges = []
    for c in point_to_pixel(p.location, p.size, p.item_size):
        start = math.floor(c - side / 2 + 0.5)
        stop = start + max(1, round(side))
        start, stop = max(start, p.lo), min(stop, p.hi)
        if stop <= start:  # the box was clipped away: keep the chosen point itself
            start, stop = c, c + 1
        ranges.append((start, stop))
    return ranges[0], ranges[1]


@REGIMES.register(uses=("pretrain.location", "pretrain.translation"))
def translation(p: Placement, labels: torch.Tensor, items: torch.Tensor, gen: torch.Generator):
    """A box of side r * |V| around `pretrain.location` (r = `pretrain.translation`)."""
    x, y = translation_box(p)
    return _box(x, y, len(labels), gen)


def class_cells(p: Placement) -> torch.Tensor:
    """[C, 2, 2] half-open (x range, y range) of each class's cell: V x V tiled r x r,
    r = ceil(sqrt(C)), class i in cell i row-major."""
    r = math.ceil(math.sqrt(p.num_classes))
    edges = [p.lo + round((p.hi - p.lo) * j / r) for j in range(r + 1)]
    cells = []
    for i in range(p.num_classes):
        row, col = divmod(i, r)
        cells.append([[edges[col], edges[col + 1]], [edges[row], edges[row + 1]]])
    return torch.tensor(cells)


@REGIMES.register(uses=())
def class_region(p: Placement, labels: torch.Tensor, items: torch.Tensor, gen: torch.Generator):
    """Class c anywhere in its own cell of V x V tiled ceil(sqrt(C)) x ceil(sqrt(C))."""
    cells = class_cells(p)[labels]  # [B, 2, 2]
    return uniform_int(cells[:, :, 0], cells[:, :, 1], gen)


def exemplar_pins(p: Placement) -> torch.Tensor:
    """[N, 2] one fixed centre per exemplar, drawn once from V x V with the data seed."""
    gen = torch.Generator().manual_seed(p.pin_seed)
    return _box((p.lo, p.hi), (p.lo, p.hi), p.num_items, gen)


@REGIMES.register(uses=("data.seed",))
def exemplar_location(
    p: Placement, labels: torch.Tensor, items: torch.Tensor, gen: torch.Generator
):
    """Each exemplar at its own fixed centre, drawn once with the data seed."""
    return exemplar_pins(p)[items]


@REGIMES.register(uses=())
def left(p: Placement, labels: torch.Tensor, items: torch.Tensor, gen: torch.Generator):
    """Centres in the left half of the canvas (x < S/2), any height."""
    return _box((p.lo, p.size // 2), (p.lo, p.hi), len(labels), gen)


@REGIMES.register(uses=())
def right(p: Placement, labels: torch.Tensor, items: torch.Tensor, gen: torch.Generator):
    """Centres in the right half of the canvas (x >= S/2), any height."""
    return _box((p.size // 2, p.hi), (p.lo, p.hi), len(labels), gen)


@REGIMES.register(uses=())
def hline(p: Placement, labels: torch.Tensor, items: torch.Tensor, gen: torch.Generator):
    """Centres on the middle row (y = S/2), any x."""
    return _box((p.lo, p.hi), (p.size // 2, p.size // 2 + 1), len(labels), gen)


def parse_class_regimes(text: str, source: str = "") -> dict[int, str]:
    """`"0=left,3=right"` as {0: "left", 3: "right"}; raises ConfigError naming the bad pair."""
    pairs = class_regime_pairs(text, source)
    for name in pairs.values():
        check_choice("pretrain.class_regimes", name, REGIMES, source, kind=REGIMES.kind)
    return pairs


def build_sampler(
    regime: str, placement: Placement, class_regimes: dict[int, str] | None = None
) -> Callable[[torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]:
    """A function (labels [B], item indices [B], generator) -> centres [B, 2] for a regime,
    optionally overridden per class."""
    check_choice("pretrain.regime", regime, REGIMES)
    mapping = dict(class_regimes or {})
    for cls in mapping:
        if not 0 <= cls < placement.num_classes:
            raise ConfigError(
                f"class {cls} in pretrain.class_regimes is outside 0..{placement.num_classes - 1}"
            )
    pins = exemplar_pins(placement) if "exemplar_location" in {regime, *mapping.values()} else None

    def fn_for(name: str) -> Regime:
        if name == "exemplar_location":  # pins are drawn once, not per batch
            return lambda p, labels, items, gen: pins[items]
        return REGIMES[name]

    default_fn = fn_for(regime)
    overrides = {cls: fn_for(name) for cls, name in mapping.items()}

    def sample(labels: torch.Tensor, items: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        centres = default_fn(placement, labels, items, gen)
        for cls, fn in overrides.items():
            # Every override draws for the whole batch so the RNG stream does not depend on
            # which classes happen to be in it.
            drawn = fn(placement, labels, items, gen)
            centres = torch.where((labels == cls)[:, None], drawn, centres)
        return centres

    return sample
