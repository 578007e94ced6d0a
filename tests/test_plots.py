"""Figures render for real (Agg, no pyplot) and show what they claim: colour limits, the trained
centre, layer order, axis scales, seed bands and cell means."""

from __future__ import annotations

import io
import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PolyCollection, QuadMesh
from matplotlib.patches import Rectangle
from PIL import Image

from transinv import plots, study_plots

PNG = b"\x89PNG\r\n\x1a\n"
XS = YS = np.arange(8, 57, 4)  # the small preset's 13 x 13 grid


def _acc_grid() -> np.ndarray:
    gx, gy = np.meshgrid(XS, YS)
    return 0.1 + 0.9 * np.exp(-np.hypot(gx - 16, gy - 32) / 10)


def _scores() -> dict[str, float]:
    scores = {"finetune/acc_trained": 0.97, "forgetting/G_drop/fc1": 0.3}
    for layer, i, d in [("conv1", 0.8, 0.7), ("conv2", 0.7, 0.6), ("fc1", 0.9, 0.5)]:
        scores[f"invariance/I/{layer}"] = i
        scores[f"invariance/D/{layer}"] = d
        scores[f"invariance/G/{layer}"] = (i - d) / (1 - d)
    return scores


def _long_curves() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = [
        {"seed": seed, "step": step, "pretrain.translation": t, "value": rng.uniform()}
        for t in (0.0, 1.0)
        for seed in range(3)
        for step in (0, 100, 200, 300)
    ]
    return pd.DataFrame(rows)


def _searches() -> pd.DataFrame:
    """Two samplers x two searches of three trials; random's second finds nothing feasible at
    its first trial."""
    best = {("tpe", 0): [0.2, 0.6, 0.6], ("tpe", 1): [0.4, 0.4, 0.8],
            ("random", 0): [0.3, 0.3, 0.5], ("random", 1): [np.nan, 0.1, 0.3]}  # fmt: skip
    return pd.DataFrame(
        [
            {"sampler": s, "search seed": seed, "trial": t + 1, "best": b}
            for (s, seed), values in best.items()
            for t, b in enumerate(values)
        ]
    )


BUILDERS = {
    "accuracy_heatmap": lambda: plots.accuracy_heatmap(_acc_grid(), XS, YS, (16, 32), 0.1, "t"),
    "invariance_by_layer": lambda: plots.invariance_by_layer(_scores(), "final"),
    "forgetting_figure": lambda: plots.forgetting_figure(
        {"finetune/acc_untrained": {0: 0.2, 100: 0.5, 200: 0.4}}
    ),
    "curves_with_bands": lambda: study_plots.curves_with_bands(
        _long_curves(), "step", "value", "pretrain.translation"
    ),
    "surface_heatmap": lambda: study_plots.surface_heatmap(
        _long_curves(), "step", "pretrain.translation", "value"
    ),
    "condition_bars": lambda: study_plots.condition_bars(
        _long_curves(), "step", "value", "pretrain.translation", chance=0.1
    ),
    "search_curves": lambda: study_plots.search_curves(_searches(), target=0.5),
    "layer_profile": lambda: study_plots.layer_profile(
        _long_curves().assign(layer=lambda f: "l" + f["step"].astype(str)),
        "layer",
        "value",
        "pretrain.translation",
    ),
}


def _mesh(fig) -> QuadMesh:
    (mesh,) = [c for c in fig.axes[0].collections if isinstance(c, QuadMesh)]
    return mesh


@pytest.mark.parametrize("name", list(BUILDERS))
def test_every_figure_renders_to_a_png_of_its_size(name):
    fig = BUILDERS[name]()
    png = plots.to_png(fig, dpi=80)
    assert png.startswith(PNG)
    width, height = Image.open(io.BytesIO(png)).size
    assert (width, height) == (round(fig.get_figwidth() * 80), round(fig.get_figheight() * 80))
    assert width >= 400 and height >= 300
    assert fig.axes[0].get_title()


def test_figures_render_concurrently_in_threads():
    with ThreadPoolExecutor(4) as pool:
        pngs = list(pool.map(lambda name: plots.to_png(BUILDERS[name](), dpi=50), BUILDERS))
    assert all(p.startswith(PNG) for p in pngs)


@pytest.mark.parametrize("chance, lo", [(0.1, 0.05), (0.5, 0.45), (0.02, 0.0)])
def test_accuracy_heatmap_scales_from_just_below_chance_to_one(chance, lo):
    fig = plots.accuracy_heatmap(_acc_grid(), XS, YS, None, chance)
    assert _mesh(fig).get_clim() == pytest.approx((lo, 1.0))


def test_accuracy_heatmap_is_in_canvas_pixels_with_y_downwards_and_annotated_cells():
    fig = plots.accuracy_heatmap(_acc_grid(), XS, YS, (16, 32), 0.1)
    ax = fig.axes[0]
    assert ax.yaxis_inverted() and not ax.xaxis_inverted()
    assert ax.get_xlabel() == "item centre x (px)" and ax.get_ylabel() == "item centre y (px)"
    assert sorted(ax.get_xlim()) == [6.0, 58.0]
    texts = {(t.get_position(), t.get_text()) for t in ax.texts}
    assert len(texts) == XS.size * YS.size
    assert ((16.0, 32.0), "1.00") in texts
    assert fig.axes[1].get_ylabel().startswith("accuracy")  # the colourbar


def test_large_grids_are_not_annotated():
    xs = np.arange(2, 64, 2)  # 31 centres a side
    fig = plots.accuracy_heatmap(np.full((xs.size, xs.size), 0.5), xs, xs, None, 0.1)
    assert len(fig.axes[0].texts) == 0


def test_trained_centre_on_an_annotated_grid_is_framed_in_red():
    fig = plots.accuracy_heatmap(_acc_grid(), XS, YS, (16, 32), 0.1)
    (frame,) = [p for p in fig.axes[0].patches if isinstance(p, Rectangle)]
    assert frame.get_edgecolor()[:3] == (1.0, 0.0, 0.0)
    assert frame.get_xy() == (14.0, 30.0) and frame.get_width() == frame.get_height() == 4.0
    assert "trained centre (16, 32)" in [t.get_text() for t in fig.axes[0].get_legend().texts]


def test_trained_centre_off_the_grid_gets_a_red_cross():
    fig = plots.accuracy_heatmap(_acc_grid(), XS, YS, (17, 31), 0.1)
    (cross,) = [line for line in fig.axes[0].lines if line.get_marker() == "X"]
    assert (cross.get_xdata()[0], cross.get_ydata()[0]) == (17, 31)
    assert cross.get_markerfacecolor() == "red"


def test_no_trained_mark_without_a_trained_centre():
    fig = plots.accuracy_heatmap(_acc_grid(), XS, YS, None, 0.1)
    assert len(fig.axes[0].lines) == 0 and fig.axes[0].get_legend() is None
    assert not [p for p in fig.axes[0].patches if isinstance(p, Rectangle)]


def test_heatmap_rejects_a_grid_that_does_not_match_its_centres():
    with pytest.raises(ValueError, match=r"\(13, 12\)"):
        plots.accuracy_heatmap(np.zeros((13, 12)), XS[:12], YS[:12], None, 0.1)


def test_heatmap_shows_a_missing_value_as_a_dash():
    acc = _acc_grid()
    acc[0, 0] = math.nan
    fig = plots.accuracy_heatmap(acc, XS, YS, (16, 32), 0.1)
    assert ((8.0, 8.0), "–") in {(t.get_position(), t.get_text()) for t in fig.axes[0].texts}
    assert plots.to_png(fig).startswith(PNG)


def test_invariance_by_layer_keeps_layer_order_and_ignores_other_keys():
    scores = {
        "invariance/G_grid/fc9": 1.0,  # a grid key, not a layer score
        "invariance/acc_mean": 0.5,
        "invariance/I/fc1": 0.9,
        "forgetting/G_drop/conv0": 0.1,
        **_scores(),
    }
    fig = plots.invariance_by_layer(scores)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["fc1", "conv1", "conv2"]
    i_line = next(line for line in ax.lines if line.get_label().startswith("I:"))
    assert list(i_line.get_ydata()) == pytest.approx([0.9, 0.8, 0.7])
    bars = ax.containers[0]
    assert [b.get_height() for b in bars] == pytest.approx([0.8, 1 / 3, 0.25])
    reference_lines = {tuple(line.get_ydata()) for line in ax.lines}
    assert {(0, 0), (1, 1)} <= reference_lines


def test_invariance_by_layer_skips_nan_values():
    scores = _scores() | {"invariance/D/fc1": math.nan, "invariance/G/fc1": math.nan}
    ax = plots.invariance_by_layer(scores).axes[0]
    d_line = next(line for line in ax.lines if line.get_label().startswith("D:"))
    assert list(d_line.get_xdata()) == [0, 1]  # fc1 (x = 2) left out
    assert len(ax.containers[0]) == 2
    assert [t.get_text() for t in ax.get_xticklabels()] == ["conv1", "conv2", "fc1"]


def test_invariance_by_layer_without_invariance_keys_still_renders():
    fig = plots.invariance_by_layer({"finetune/acc_trained": 1.0})
    assert plots.to_png(fig).startswith(PNG)


def test_forgetting_figure_uses_symlog_for_log_spaced_steps_and_linear_otherwise():
    log_steps = {s: 0.5 for s in [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512]}
    lin_steps = {s: 0.5 for s in range(0, 1001, 100)}
    assert plots.forgetting_figure({"a/b": log_steps}).axes[0].get_xscale() == "symlog"
    assert plots.forgetting_figure({"a/b": lin_steps}).axes[0].get_xscale() == "linear"


def test_forgetting_figure_marks_peaks_skips_nan_and_labels_keys():
    curves = {
        "finetune/acc_untrained": {0: 0.1, 100: 0.6, 200: math.nan, 300: 0.3},
        "invariance/G/fc1": {0: 0.8, 100: 0.5, 300: 0.2},
    }
    ax = plots.forgetting_figure(curves).axes[0]
    assert ax.get_ylim() == pytest.approx((-0.05, 1.05))
    acc = next(line for line in ax.lines if line.get_label().startswith("finetune/acc_untr"))
    assert list(acc.get_xdata()) == [0, 100, 300]
    stars = [
        (line.get_xdata()[0], line.get_ydata()[0]) for line in ax.lines if line.get_marker() == "*"
    ]
    assert stars == [(100, 0.6), (0, 0.8)]
    labels = [t.get_text() for t in ax.get_legend().texts]
    assert all(any(label.startswith(key) for label in labels) for key in curves)


def test_forgetting_figure_leaves_y_free_for_values_outside_zero_one():
    ax = plots.forgetting_figure({"invariance/G/fc1": {0: -0.4, 10: 0.5}}).axes[0]
    assert ax.get_ylim()[0] < -0.4


def test_curves_with_bands_band_covers_replicate_min_to_max():
    frame = _long_curves()
    ax = study_plots.curves_with_bands(frame, "step", "value", "pretrain.translation").axes[0]
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 2
    for band, (_, rows) in zip(bands, frame.groupby("pretrain.translation"), strict=True):
        vertices = band.get_paths()[0].vertices
        for step, values in rows.groupby("step")["value"]:
            ys = vertices[np.isclose(vertices[:, 0], step), 1]
            assert ys.min() == pytest.approx(values.min())
            assert ys.max() == pytest.approx(values.max())
    means = frame[frame["pretrain.translation"] == 0.0].groupby("step")["value"].mean()
    assert list(ax.lines[0].get_ydata()) == pytest.approx(list(means))


def test_curves_with_bands_without_groups_drops_nan_rows():
    frame = pd.DataFrame({"x": [0, 0, 1, 1], "y": [0.2, 0.4, math.nan, 0.6]})
    ax = study_plots.curves_with_bands(frame, "x", "y").axes[0]
    assert list(ax.lines[0].get_ydata()) == pytest.approx([0.3, 0.6])


def test_curves_with_bands_names_missing_columns():
    with pytest.raises(KeyError, match="nope"):
        study_plots.curves_with_bands(_long_curves(), "step", "nope")


def test_surface_heatmap_shows_cell_means():
    frame = pd.DataFrame(
        {
            "pretrain.steps": [0, 0, 0, 3000, 3000, 3000],
            "finetune.steps": [10, 10, 100, 10, 100, 100],
            "acc": [0.2, 0.4, 0.1, 0.9, 0.5, 0.7],
        }
    )
    fig = study_plots.surface_heatmap(frame, "finetune.steps", "pretrain.steps", "acc")
    ax = fig.axes[0]
    # rows: pretrain.steps 0, 3000; columns: finetune.steps 10, 100
    expected = np.array([[0.3, 0.1], [0.9, 0.6]])
    assert np.asarray(_mesh(fig).get_array()).reshape(2, 2) == pytest.approx(expected)
    assert [t.get_text() for t in ax.texts] == ["0.30", "0.10", "0.90", "0.60"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["10", "100"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "3000"]
    assert not ax.yaxis_inverted()


@pytest.mark.parametrize("key", ["finetune/acc_grid", "invariance/G_grid/fc1"])
def test_evaluation_heatmap_has_pixel_axes_a_colour_bar_the_trained_centre_and_its_step(key):
    grid = _acc_grid()
    grid[0, 0] = math.nan
    fig = plots.evaluation_heatmap(key, grid, XS, YS, (16, 32), "finetune", 150, chance=0.1)
    ax, bar = fig.axes  # the map and its colour bar
    assert ax.get_title() == f"{key}, finetune step 150"
    assert ax.get_xlabel() == "item centre x (px)" and ax.get_yticks() == pytest.approx(YS)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["trained centre (16, 32)"]
    assert bar.get_ylim()[1] == pytest.approx(1.0)
    from PIL import Image

    image = Image.open(io.BytesIO(plots.to_png(fig)))
    assert min(image.size) >= 400  # readable in the UI, not a 13-pixel block


def test_condition_bars_show_the_mean_and_every_replicate():
    frame = pd.DataFrame({"arch": ["a"] * 3 + ["b"] * 3, "acc": [0.1, 0.2, 0.6, 0.9, 0.8, 1.0]})
    ax = study_plots.condition_bars(frame, "arch", "acc").axes[0]
    heights = sorted(round(p.get_height(), 6) for p in ax.patches if isinstance(p, Rectangle))
    assert heights == [0.3, 0.9]
    dots = [line for line in ax.lines if line.get_marker() == "o"]
    assert sorted(v for line in dots for v in line.get_ydata()) == sorted(frame["acc"])


def test_layer_profile_keeps_layer_order_and_means():
    frame = pd.DataFrame(
        {
            "layer": ["conv1", "fc1", "logits"] * 2,
            "G": [0.0, 0.6, 0.4, 0.2, 0.8, 0.6],
            "condition": ["whole"] * 6,
        }
    )
    ax = study_plots.layer_profile(frame, "layer", "G", "condition").axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["conv1", "fc1", "logits"]
    (line,) = [line for line in ax.lines if line.get_marker() == "o"]
    assert np.allclose(line.get_ydata(), [0.1, 0.7, 0.5])


def test_search_curves_draw_each_search_and_the_mean_where_every_search_has_a_value():
    ax = study_plots.search_curves(_searches(), target=0.5).axes[0]
    means = {line.get_label(): line.get_ydata() for line in ax.lines if line.get_linewidth() > 2}
    assert set(means) == {"random (mean of 2)", "tpe (mean of 2)"}
    assert np.allclose(means["tpe (mean of 2)"], [0.3, 0.5, 0.7])
    random = means["random (mean of 2)"]  # no mean until both searches found something
    assert np.isnan(random[0]) and np.allclose(random[1:], [0.2, 0.4])
    thin = [line for line in ax.lines if line.get_linewidth() == 1 and line.get_alpha() == 0.35]
    assert len(thin) == 4
    assert any(line.get_label() == "target 0.5" for line in ax.lines)


def test_condition_bars_turn_long_condition_names_so_they_do_not_overlap():
    names = [f"antialias={a} arch={h} pretrain={p}" for a in "xyz" for h in "fg" for p in "nw"]
    frame = pd.DataFrame({"condition": names, "acc": np.linspace(0.1, 0.9, len(names))})
    ax = study_plots.condition_bars(frame, "condition", "acc").axes[0]
    assert {t.get_rotation() for t in ax.get_xticklabels()} == {30.0}
    short = study_plots.condition_bars(_long_curves(), "step", "value").axes[0]
    assert {t.get_rotation() for t in short.get_xticklabels()} == {0.0}
