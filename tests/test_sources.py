"""Item sources: procedural glyphs are deterministic and distinct per set, real datasets load
offline from ../shared/data (a missing file there fails), and item sets are sorted, split and
normalised as the canvas stream expects."""

import pytest
import torch

from transinv import config, sources
from transinv.config import ConfigError, TrialConfig
from transinv.sources import (
    SOURCES,
    DatasetUnavailableError,
    ItemSet,
    SourceRequest,
    canvas_stats,
    draw_segments,
    load_items,
    source_names,
)

K, S = 16, 64
ROOT = config.data_root(TrialConfig())
REAL = ["mnist", "fashion_mnist", "omniglot", "omniglot_eval"]
DEFAULTS = {
    "glyphs": (30, 48, 12),
    "glyphs_b": (10, 96, 24),
    "omniglot": (100, 16, 4),
    "omniglot_eval": (50, 16, 4),
}
"""Source: (classes, training items per class, held-out items per class)."""


def items(name: str, classes: int = 0, seed: int = 0, k: int = K) -> ItemSet:
    return load_items(name, classes, k, seed, ROOT, False, S)


def class_means(item_set: ItemSet, split: str) -> torch.Tensor:
    """[C, k*k] mean image of each class."""
    images = getattr(item_set, split).flatten(1)
    labels = getattr(item_set, f"{split}_labels")
    return torch.stack([images[labels == c].mean(0) for c in range(item_set.num_classes)])


def test_the_registry_holds_the_documented_sources_and_feeds_config_choices():
    assert source_names() == [
        "glyphs",
        "glyphs_b",
        "mnist",
        "fashion_mnist",
        "omniglot",
        "omniglot_eval",
    ]
    assert list(config.choices_for("finetune.dataset")) == source_names()
    assert list(config.choices_for("pretrain.dataset")) == ["none", "imagenet", *SOURCES]


@pytest.mark.parametrize("name", source_names())
def test_every_source_loads_offline_sorted_in_range_with_every_class_held_out(name):
    item_set = items(name)
    n = item_set.num_classes
    for split in ("train", "test"):
        images, labels = getattr(item_set, split), getattr(item_set, f"{split}_labels")
        assert images.dtype == torch.float32 and images.shape[1:] == (K, K)
        assert labels.dtype == torch.int64 and labels.shape == images.shape[:1]
        assert images.min() >= 0 and images.max() <= 1
        assert torch.equal(labels, labels.sort().values)
        assert torch.equal(labels.unique(), torch.arange(n)), f"{split} lacks a class"
        assert images.flatten(1).amax(1).min() > 0.2, f"a {split} item without visible ink"
    # Background is black: ink is the minority of pixels, whatever the source's polarity.
    assert item_set.train.mean() < 0.35


@pytest.mark.parametrize("name", DEFAULTS)
def test_default_sets_have_the_documented_classes_and_split(name):
    classes, per_train, per_test = DEFAULTS[name]
    item_set = items(name)
    assert item_set.num_classes == classes
    assert item_set.train.shape == (classes * per_train, K, K)
    assert item_set.test.shape == (classes * per_test, K, K)


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_mnist_style_sets_keep_torchvisions_standard_split(name):
    item_set = items(name)
    assert item_set.num_classes == 10
    assert len(item_set.train) == 60_000 and len(item_set.test) == 10_000


def test_class_slices_cover_each_class_contiguously():
    item_set = items("mnist")
    starts, counts = item_set.class_slices()
    assert starts.dtype == counts.dtype == torch.int64
    assert counts.sum() == len(item_set.train) and starts[0] == 0
    for c in range(item_set.num_classes):
        block = item_set.train_labels[starts[c] : starts[c] + counts[c]]
        assert (block == c).all()
    assert torch.equal(counts, torch.bincount(item_set.train_labels))


@pytest.mark.parametrize("name", ["glyphs", "glyphs_b"])
def test_every_glyph_has_solid_strokes(name):
    for images in (items(name).train, items(name).test):
        assert (images.flatten(1).amax(1) == 1).all()
        # Strokes are thin lines, not blobs: a small fraction of the item is ink.
        assert 0.05 < images.mean() < 0.3


def test_drawn_strokes_are_the_supersamples_within_half_a_width_of_a_segment():
    gen = torch.Generator().manual_seed(0)
    starts, stops = torch.rand(6, 3, 2, generator=gen), torch.rand(6, 3, 2, generator=gen)
    stops[0, 0] = starts[0, 0]  # a point-like segment draws a dot
    threads = torch.get_num_threads()
    drawn = draw_segments(starts, stops, K)
    assert torch.get_num_threads() == threads
    # Brute force on the whole raster, in float64, with the module's constants.
    size, margin = 4 * K, sources.GLYPH_MARGIN
    a = (margin + (1 - 2 * margin) * starts.double()) * size
    b = (margin + (1 - 2 * margin) * stops.double()) * size
    y, x = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    p = torch.stack([x, y], -1).double()[None, None]  # [1, 1, size, size, 2]
    a, d = a[:, :, None, None], (b - a)[:, :, None, None]
    t = ((p - a) * d).sum(-1) / (d * d).sum(-1).clamp_min(1e-12)
    gap = p - a - t.clamp(0, 1)[..., None] * d
    half_width = sources.GLYPH_STROKE * K * 4 / 2
    ink = ((gap * gap).sum(-1).amin(1) <= half_width**2).double()
    expected = torch.nn.functional.avg_pool2d(ink[:, None], 4)[:, 0]
    # Supersamples exactly on a stroke's edge may fall either way in float32.
    assert (drawn - expected).abs().max() <= 1 / 16
    assert (drawn - expected).abs().mean() < 1e-3


def test_glyphs_are_deterministic_for_a_data_seed_and_differ_for_another():
    request = SourceRequest(classes=4, item_size=K, data_seed=3, root=ROOT, download=False)
    first, again = SOURCES["glyphs"](request), SOURCES["glyphs"](request)
    assert torch.equal(first.train, again.train) and torch.equal(first.test, again.test)
    other = SOURCES["glyphs"](SourceRequest(4, K, 4, ROOT, False))
    assert (first.train - other.train).abs().mean() > 0.1


def test_glyphs_b_shares_no_class_with_glyphs():
    a, b = items("glyphs"), items("glyphs_b")
    # Each glyphs_b class's held-out mean is nearer its own training mean than any glyphs class.
    own = (class_means(b, "test") - class_means(b, "train")).norm(dim=1)
    nearest_other = torch.cdist(class_means(b, "test"), class_means(a, "train")).min(1).values
    assert (own < nearest_other).all()


def test_held_out_glyphs_are_recognisably_their_own_class():
    item_set = items("glyphs")
    distances = torch.cdist(item_set.test.flatten(1), class_means(item_set, "train"))
    accuracy = (distances.argmin(1) == item_set.test_labels).float().mean()
    assert accuracy > 0.9


def test_fewer_glyph_classes_are_the_first_classes_of_the_default_set():
    few, full = items("glyphs", classes=5), items("glyphs")
    assert few.num_classes == 5 and few.train.shape == (5 * 48, K, K)
    assert torch.equal(few.train, full.train[: 5 * 48])


def test_glyph_strokes_scale_with_the_item_size():
    small, large = items("glyphs", classes=3, k=16), items("glyphs", classes=3, k=48)
    assert large.train.shape[1:] == (48, 48)
    assert large.train.max() == 1
    assert large.train.mean().item() == pytest.approx(small.train.mean().item(), rel=0.15)


def test_fewer_real_classes_are_a_seeded_subset_relabelled_from_zero():
    full, few = items("mnist"), items("mnist", classes=3, seed=5)
    assert few.num_classes == 3
    assert torch.equal(few.train_labels.unique(), torch.arange(3))
    f_starts, f_counts = full.class_slices()
    starts, counts = few.class_slices()
    picked = []
    for c in range(3):
        # Each new class is one whole original class, in ascending order of original id.
        match = [
            o
            for o in range(10)
            if f_counts[o] == counts[c]
            and torch.equal(
                full.train[f_starts[o] : f_starts[o] + 5], few.train[starts[c] : starts[c] + 5]
            )
        ]
        assert len(match) == 1
        picked += match
    assert picked == sorted(picked)
    assert torch.equal(items("mnist", classes=3, seed=5).train, few.train)


def test_omniglot_ink_is_bright_and_the_minority_of_pixels():
    # The archives store True for background; loading must invert them.
    for name in ("omniglot", "omniglot_eval"):
        item_set = items(name)
        assert 0.02 < item_set.train.mean() < 0.2
        corners = item_set.train[:, [0, 0, -1, -1], [0, -1, 0, -1]]
        assert corners.mean() < 0.05


def test_the_two_omniglot_sets_hold_different_characters():
    # Were both read from one archive, about 15 of these 50 characters would be among the 300.
    background, evaluation = items("omniglot", classes=300), items("omniglot_eval")
    nearest = torch.cdist(evaluation.train.flatten(1), background.train.flatten(1)).min(1)
    assert (nearest.values > 0).all()


def test_canvas_stats_match_pixels_of_real_canvases():
    item_set = items("glyphs")
    chosen = item_set.train[[0, 50, 100, 700]]
    canvases = torch.zeros(len(chosen), S, S, dtype=torch.float64)
    for canvas, item, (x, y) in zip(
        canvases, chosen, [(0, 0), (3, 40), (48, 48), (20, 11)], strict=True
    ):
        canvas[y : y + K, x : x + K] = item
    mean, std = canvas_stats(chosen, S)
    assert mean == pytest.approx(canvases.mean().item(), rel=1e-9)
    assert std == pytest.approx(canvases.std(unbiased=False).item(), rel=1e-9)


def test_canvas_stats_with_labels_weigh_classes_equally_as_the_stream_samples_them():
    item_set = items("glyphs")
    chosen = item_set.train[[0, 50, 100]]
    labels = torch.tensor([0, 1, 1])
    # Class 0 has one item and class 1 two: the stream shows item 0 as often as both others.
    canvases = torch.zeros(4, S, S, dtype=torch.float64)
    for canvas, item in zip(canvases, chosen[[0, 0, 1, 2]], strict=True):
        canvas[10 : 10 + K, 30 : 30 + K] = item
    mean, std = canvas_stats(chosen, S, labels)
    assert mean == pytest.approx(canvases.mean().item(), rel=1e-9)
    assert std == pytest.approx(canvases.std(unbiased=False).item(), rel=1e-9)
    assert (item_set.mean, item_set.std) == canvas_stats(item_set.train, S, item_set.train_labels)


def test_loading_the_same_set_again_returns_the_cached_object():
    assert items("glyphs_b") is items("glyphs_b")


@pytest.mark.parametrize("name", REAL)
def test_a_missing_root_raises_dataset_unavailable_naming_the_path(name, tmp_path):
    with pytest.raises(DatasetUnavailableError) as info:
        load_items(name, 0, K, 0, tmp_path, False, S)
    message = str(info.value)
    assert str(tmp_path) in message and name in message
    assert "data.root or TRANSINV_DATA" in message
    assert isinstance(info.value, FileNotFoundError)


def test_an_unknown_dataset_is_a_config_error_listing_the_choices():
    with pytest.raises(
        ConfigError, match=r"unknown dataset 'kmnist'.*choose one of glyphs, glyphs_b, mnist"
    ):
        load_items("kmnist", 0, K, 0, ROOT, False, S)


@pytest.mark.parametrize(
    ("name", "most"), [("mnist", 10), ("omniglot", 964), ("omniglot_eval", 659)]
)
def test_more_classes_than_the_source_has_is_a_config_error(name, most):
    with pytest.raises(
        ConfigError, match=rf"'{name}' has at most {most} classes; asked for {most + 1}"
    ):
        load_items(name, most + 1, K, 0, ROOT, False, S)


def test_the_shared_data_folder_is_the_default_root():
    # CI always has it; real-dataset tests must fail, not skip, without it.
    assert (ROOT / "MNIST" / "raw").is_dir() and (ROOT / "omniglot").is_dir(), ROOT
