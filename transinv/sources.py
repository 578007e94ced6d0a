"""Item sources: class-labelled greyscale items, split into training and held-out exemplars and
resized to the canvas item size.

Lives here: the sources registered into `SOURCES` (`transinv/choices.py`) with their class
limits as facts (`@SOURCES.register(default_classes=..., max_classes=...)`), the procedural glyph
sets `glyphs` and `glyphs_b`, the offline loaders of MNIST, FashionMNIST and Omniglot, resizing,
and the pixel statistics of canvases holding one item (for normalisation). Not here: pasting
items on canvases and the training stream (`canvas.py`), where centres may fall (`regimes.py`).

Every item is float32 in [0, 1], ink bright on a background of 0. Loading never touches the
network unless `data.download` is true, and then only torchvision's own MNIST/FashionMNIST.
"""

from __future__ import annotations

import contextlib
import functools
import math
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from transinv.choices import SOURCES
from transinv.config import ConfigError

HELD_OUT = 0.2
"""Fraction of each glyph class's exemplars held out for testing."""


class DatasetUnavailableError(FileNotFoundError):
    """A real dataset's files are not where the config says; the message says how to fix it."""


@dataclass(frozen=True)
class SourceRequest:
    """What a source is asked for; `classes` is already resolved (never 0)."""

    classes: int
    item_size: int
    """k, the item side in pixels on the canvas."""
    data_seed: int
    root: Path
    """Folder holding MNIST/, FashionMNIST/ and omniglot/."""
    download: bool


@dataclass(frozen=True)
class RawItems:
    """A source's items at its native resolution, before resizing and sorting."""

    train: torch.Tensor
    """[N, H, W] float32 in [0, 1], ink bright, background 0."""
    train_labels: torch.Tensor
    """[N] int64 in [0, classes)."""
    test: torch.Tensor
    """[M, H, W], as `train`."""
    test_labels: torch.Tensor
    """[M] int64."""


SourceFn = Callable[[SourceRequest], RawItems]


@dataclass(frozen=True, eq=False)  # identity equality: the fields are tensors
class ItemSet:
    """Items of one source at the canvas item size, sorted by label (stably).

    Shared by every caller of the cached `load_items`: never modify its tensors in place.
    """

    name: str
    num_classes: int
    train: torch.Tensor
    """[N, k, k] float32 in [0, 1]."""
    train_labels: torch.Tensor
    """[N] int64, ascending."""
    test: torch.Tensor
    """[M, k, k] float32 in [0, 1]."""
    test_labels: torch.Tensor
    """[M] int64, ascending."""
    mean: float
    """Pixel mean of canvases holding one training item (see `canvas_stats`)."""
    std: float
    _slices: tuple[torch.Tensor, torch.Tensor] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # The training stream asks for the slices every batch; they never change.
        counts = torch.bincount(self.train_labels, minlength=self.num_classes)
        object.__setattr__(self, "_slices", (torch.cumsum(counts, 0) - counts, counts))

    def class_slices(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(start [C], count [C]) int64: class c is `train[start[c] : start[c] + count[c]]`."""
        return self._slices


# Asked for often enough to deserve a reason in the error (paper.md, Section 5).
_NOT_OFFLINE = {
    "kmnist": "Kuzushiji-MNIST is not available offline",
    "emnist": "EMNIST is not available offline",
}


def source_names() -> list[str]:
    return SOURCES.names()


# --------------------------------------------------------------------------------------------
# Loading, resizing, statistics


@functools.lru_cache(maxsize=16)
def load_items(
    name: str,
    classes: int,
    item_size: int,
    data_seed: int,
    root: Path,
    download: bool,
    canvas_size: int,
) -> ItemSet:
    """The item set `name` with `classes` classes (0: the source's default) at k = `item_size`.

    Cached per process because the trainer loads the same set for each phase and evaluation.
    Raises ConfigError for an unknown name or too many classes, DatasetUnavailableError when a
    real dataset's files are missing.
    """
    if name not in SOURCES:
        why = f" ({_NOT_OFFLINE[name]})" if name in _NOT_OFFLINE else ""
        raise ConfigError(
            f"unknown dataset {name!r}{why}; choose one of {', '.join(source_names())}"
        )
    facts = SOURCES.facts(name)
    if classes < 0:
        raise ConfigError(f"dataset {name!r}: classes must be >= 0 (0 = default), got {classes}")
    n = classes or facts["default_classes"]
    if facts["max_classes"] is not None and n > facts["max_classes"]:
        raise ConfigError(
            f"dataset {name!r} has at most {facts['max_classes']} classes; asked for {n}"
        )
    if not 1 <= item_size <= canvas_size:
        raise ConfigError(f"item size {item_size} must be in [1, canvas size {canvas_size}]")

    raw = SOURCES[name](SourceRequest(n, item_size, data_seed, Path(root), download))
    train, train_labels = _finish(raw.train, raw.train_labels, item_size, n, name)
    test, test_labels = _finish(raw.test, raw.test_labels, item_size, n, name)
    mean, std = canvas_stats(train, canvas_size, train_labels)
    return ItemSet(name, n, train, train_labels, test, test_labels, mean, std)


def _finish(
    images: torch.Tensor, labels: torch.Tensor, k: int, classes: int, name: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resized to [N, k, k], clamped to [0, 1], sorted by label; checks the source's output."""
    if images.ndim != 3 or labels.shape != images.shape[:1]:
        raise ValueError(
            f"source {name!r} returned items {tuple(images.shape)} with labels "
            f"{tuple(labels.shape)}; expected [N, H, W] and [N]"
        )
    labels = labels.long()
    present = torch.unique(labels)
    if len(present) != classes or present.min() != 0 or present.max() != classes - 1:
        raise ValueError(f"source {name!r} must return every label in [0, {classes})")
    items = resize(images, k)
    order = torch.sort(labels, stable=True).indices
    return items[order], labels[order]


def resize(images: torch.Tensor, k: int, chunk: int = 4096) -> torch.Tensor:
    """images: [N, H, W] -> [N, k, k] float32 in [0, 1] (bilinear, antialiased, as when pasting).

    Chunked so that a whole dataset is never held as float at both sizes at once.
    """
    n, h, w = images.shape
    if (h, w) == (k, k):
        return images.float().clamp(0, 1)
    out = torch.empty(n, k, k)
    for start in range(0, n, chunk):
        block = images[start : start + chunk, None].float()
        out[start : start + chunk] = F.interpolate(
            block, size=(k, k), mode="bilinear", antialias=True, align_corners=False
        )[:, 0]
    # Antialiased bilinear overshoots slightly near sharp edges.
    return out.clamp_(0, 1)


def canvas_stats(
    items: torch.Tensor, canvas_size: int, labels: torch.Tensor | None = None
) -> tuple[float, float]:
    """Pixel (mean, std) of S x S black canvases each holding one item fully inside.

    items: [N, k, k]; labels: [N] or None. A fully inside item contributes its whole sum
    wherever it is, so the result is exact and the same for every regime. With `labels`, each
    class weighs the same and its items share that weight, as in the stream's class-then-exemplar
    sampling; without, every item weighs the same.
    """
    if items.shape[-1] > canvas_size or items.shape[-2] > canvas_size:
        raise ValueError(f"items {tuple(items.shape[-2:])} do not fit a {canvas_size} px canvas")
    flat = items.reshape(len(items), -1).double()
    if labels is None:
        weights = torch.full((len(items),), 1.0 / len(items), dtype=torch.float64)
    else:
        counts = torch.bincount(labels).double()
        weights = 1.0 / (counts[labels] * (counts > 0).sum())
    area = float(canvas_size) ** 2
    mean = float(weights @ flat.sum(1)) / area
    second = float(weights @ flat.pow(2).sum(1)) / area
    return mean, math.sqrt(max(second - mean * mean, 0.0))


def _rng(stream: str, data_seed: int, *more: int) -> np.random.Generator:
    """A generator for `stream` (a source name), independent of every other stream."""
    # crc32, not hash(): it is stable across processes. The modulus keeps negative seeds legal.
    return np.random.default_rng([zlib.crc32(stream.encode()), data_seed % 2**64, *more])


def _class_subset(stream: str, data_seed: int, total: int, n: int) -> np.ndarray:
    """Sorted ids of the `n` classes out of `total` that a data seed picks (all when n = total)."""
    if n >= total:
        return np.arange(total)
    return np.sort(_rng(stream, data_seed).choice(total, size=n, replace=False))


# --------------------------------------------------------------------------------------------
# Procedural glyphs

GLYPH_JITTER = 0.06
"""Std of the per-exemplar jitter of every control point, in unit-box units."""
GLYPH_MARGIN = 0.1
"""The unit box maps to the raster minus this margin on each side, so strokes are not cut."""
GLYPH_STROKE = 1.5 / 16
"""Stroke width as a fraction of the item side: 1.5 px at k = 16, scaling with k."""
SUPERSAMPLE = 4
"""Strokes are drawn on a (4k)^2 raster and area-averaged down to k x k."""


@SOURCES.register(default_classes=30, max_classes=None)
def glyphs(request: SourceRequest) -> RawItems:
    """Omniglot-like procedural glyphs, 60 exemplars per class (paper.md, Section 5)."""
    return make_glyphs("glyphs", request.classes, 60, request.item_size, request.data_seed)


@SOURCES.register(default_classes=10, max_classes=None)
def glyphs_b(request: SourceRequest) -> RawItems:
    """A second, independent glyph set (different classes), 120 exemplars per class."""
    return make_glyphs("glyphs_b", request.classes, 120, request.item_size, request.data_seed)


def make_glyphs(stream: str, classes: int, exemplars: int, k: int, data_seed: int) -> RawItems:
    """`classes` x `exemplars` glyphs of side k, HELD_OUT of each class's exemplars as test.

    A class is 2-4 polyline strokes through 2-3 control points each, uniform in the unit box; an
    exemplar jitters every control point. Each class draws from its own generator, so class c is
    the same whatever the class count and set `stream` shares no class with another stream.
    """
    n_test = round(exemplars * HELD_OUT)
    train, test = [], []
    for c in range(classes):
        rng = _rng(stream, data_seed, c)
        n_strokes = int(rng.integers(2, 5))
        n_points = rng.integers(2, 4, size=n_strokes)
        control = rng.random((n_strokes, 3, 2))
        # Jittered points are clipped to the box so that the margin keeps every stroke whole.
        points = np.clip(control + rng.normal(0, GLYPH_JITTER, (exemplars, n_strokes, 3, 2)), 0, 1)
        stroke, step = np.array(
            [(s, j) for s in range(n_strokes) for j in range(n_points[s] - 1)]
        ).T
        starts = torch.from_numpy(points[:, stroke, step]).float()  # [E, segments, 2]
        stops = torch.from_numpy(points[:, stroke, step + 1]).float()
        items = draw_segments(starts, stops, k)
        order = torch.from_numpy(rng.permutation(exemplars))
        test.append(items[order[:n_test]])
        train.append(items[order[n_test:]])
    labels = torch.arange(classes)
    return RawItems(
        train=torch.cat(train),
        train_labels=labels.repeat_interleave(exemplars - n_test),
        test=torch.cat(test),
        test_labels=labels.repeat_interleave(n_test),
    )


def draw_segments(
    starts: torch.Tensor, stops: torch.Tensor, k: int, chunk_pixels: int = 1 << 19
) -> torch.Tensor:
    """Thick line segments, anti-aliased by area averaging.

    starts, stops: [E, G, 2] segment ends (x, y) in the unit box. Returns [E, k, k] float32 in
    [0, 1]: the fraction of each pixel's 4 x 4 supersamples within half a stroke width of a
    segment. Exemplars are drawn in chunks of about `chunk_pixels` raster pixels, small enough
    to stay in cache.
    """
    size = SUPERSAMPLE * k
    span = 1 - 2 * GLYPH_MARGIN
    a = (GLYPH_MARGIN + span * starts) * size  # raster pixel units
    b = (GLYPH_MARGIN + span * stops) * size
    d = b - a
    length2 = d.pow(2).sum(-1).clamp_min(1e-12)  # [E, G]; a point-like segment is a dot
    # Never thinner than one output pixel, so that small items keep solid ink.
    half_width = max(GLYPH_STROKE * k, 1.0) * SUPERSAMPLE / 2
    centres = torch.arange(size, dtype=torch.float32) + 0.5
    out = torch.empty(len(starts), k, k)
    step = max(1, chunk_pixels // (size * size))
    with _one_thread():
        for lo in range(0, len(starts), step):
            hi = min(lo + step, len(starts))
            near = torch.full((hi - lo, size, size), math.inf)
            for g in range(starts.shape[1]):
                # Only pixels in the chunk's bounding box of the segment can be near it, and an
                # exemplar's segments sit close to its class's, so the box is a fraction of all.
                ends = torch.cat([a[lo:hi, g], b[lo:hi, g]])
                x0, y0 = (ends.amin(0) - half_width).floor().clamp(0, size).int().tolist()
                x1, y1 = (ends.amax(0) + half_width).ceil().clamp(0, size).int().tolist()
                # The unclamped projection t0 of a pixel p on the segment and |p - a|^2 are sums
                # of a term in x and one in y (outer sums); with t = clamp(t0, 0, 1),
                # |p - a - t d|^2 = |p - a|^2 + |d|^2 t (t - 2 t0).
                vx = centres[x0:x1] - a[lo:hi, g, 0, None]  # [e, width]
                vy = centres[y0:y1] - a[lo:hi, g, 1, None]  # [e, height]
                inv = (1 / length2[lo:hi, g])[:, None]
                tx, ty = vx * (d[lo:hi, g, 0, None] * inv), vy * (d[lo:hi, g, 1, None] * inv)
                t0 = ty[:, :, None] + tx[:, None, :]
                t = t0.clamp(0, 1)
                t0.mul_(-2).add_(t).mul_(t)
                dist2 = torch.addcmul(
                    vy.pow(2)[:, :, None] + vx.pow(2)[:, None, :],
                    length2[lo:hi, g, None, None],
                    t0,
                )
                window = near[:, y0:y1, x0:x1]
                torch.minimum(window, dist2, out=window)
            ink = (near <= half_width**2).float()[:, None]
            out[lo:hi] = F.avg_pool2d(ink, SUPERSAMPLE)[:, 0]
    return out


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch ops on one thread for the duration.

    Drawing is thousands of small ops. With two intra-op threads and another busy process on the
    CPUs, each op waits on a descheduled worker, and drawing was measured 50x slower (15 s
    instead of 0.3 s); on one thread it is steady.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------------
# Real datasets (offline)

_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@SOURCES.register(default_classes=10, max_classes=10)
def mnist(request: SourceRequest) -> RawItems:
    """Handwritten digits, torchvision's standard train/test split."""
    from torchvision.datasets import MNIST

    return _torchvision_source("mnist", MNIST, request)


@SOURCES.register(default_classes=10, max_classes=10)
def fashion_mnist(request: SourceRequest) -> RawItems:
    """Zalando's clothing images, torchvision's standard train/test split."""
    from torchvision.datasets import FashionMNIST

    return _torchvision_source("fashion_mnist", FashionMNIST, request)


def _torchvision_source(name: str, dataset: type, request: SourceRequest) -> RawItems:
    """An MNIST-format torchvision dataset, restricted to a seeded subset of its classes."""
    folder = dataset.__name__
    raw = request.root / folder / "raw"
    if not request.download:
        # Checked here, not by torchvision, so the error can say where to put the files.
        missing = [f for f in _IDX_FILES if not (raw / f).is_file()]
        if missing:
            raise DatasetUnavailableError(
                f"dataset {name!r} not found: looked in {raw} for {', '.join(missing)}; set "
                f"data.root or TRANSINV_DATA to a folder holding {folder}/raw/ (see "
                "shared/data/README.md), or set data.download=true with internet access"
            )
    splits = [dataset(str(request.root), train=t, download=request.download) for t in (True, False)]
    chosen = torch.from_numpy(_class_subset(name, request.data_seed, 10, request.classes))
    relabel = torch.full((10,), -1, dtype=torch.long)
    relabel[chosen] = torch.arange(len(chosen))
    out = []
    for split in splits:
        labels = relabel[split.targets.long()]
        keep = labels >= 0
        out += [split.data[keep].float().div_(255), labels[keep]]
    return RawItems(*out)


OMNIGLOT_TRAIN_DRAWERS = 16
"""Drawers 0-15 of each character are training items, 16-19 (20 %) held out."""


@SOURCES.register(default_classes=100, max_classes=964)
def omniglot(request: SourceRequest) -> RawItems:
    """Omniglot's background set (964 characters); a class is a character."""
    return _omniglot("omniglot", "images_background.npz", request)


@SOURCES.register(default_classes=50, max_classes=659)
def omniglot_eval(request: SourceRequest) -> RawItems:
    """Omniglot's evaluation set (659 characters, none shared with `omniglot`)."""
    return _omniglot("omniglot_eval", "images_evaluation.npz", request)


def _omniglot(name: str, filename: str, request: SourceRequest) -> RawItems:
    path = request.root / "omniglot" / filename
    if not path.is_file():
        raise DatasetUnavailableError(
            f"dataset {name!r} not found: looked for {path}; set data.root or TRANSINV_DATA to a "
            f"folder holding omniglot/{filename} (see shared/data/README.md; torchvision's "
            "Omniglot download is not used)"
        )
    with np.load(path) as archive:
        images = archive["images"]  # [characters, 20 drawers, 105, 105] bool, True = background
    chosen = _class_subset(name, request.data_seed, len(images), request.classes)
    # Only the chosen characters become float: the whole set would be almost 1 GB.
    ink = torch.from_numpy(~images[chosen])
    n, drawers = ink.shape[:2]
    labels = torch.arange(n)
    return RawItems(
        train=ink[:, :OMNIGLOT_TRAIN_DRAWERS].flatten(0, 1).float(),
        train_labels=labels.repeat_interleave(OMNIGLOT_TRAIN_DRAWERS),
        test=ink[:, OMNIGLOT_TRAIN_DRAWERS:].flatten(0, 1).float(),
        test_labels=labels.repeat_interleave(drawers - OMNIGLOT_TRAIN_DRAWERS),
    )


__all__ = [
    "SOURCES",
    "DatasetUnavailableError",
    "ItemSet",
    "RawItems",
    "SourceFn",
    "SourceRequest",
    "canvas_stats",
    "draw_segments",
    "load_items",
    "make_glyphs",
    "resize",
    "source_names",
]
