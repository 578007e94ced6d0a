"""Figures of one trial: accuracy heatmaps over the canvas, invariance by layer and
forgetting curves; plus `to_png` and the styling the study figures
(`study_plots.py`) share.

Only matplotlib's object-oriented API (`Figure`, never pyplot): a figure carries no global
backend state, so Ray workers and threads can draw at once. Every function returns a `Figure`;
logging it (MLflow) is `tracking.py`'s job and loading runs into tables is `results.py`'s.
Colours are colour-blind friendly (viridis, the Okabe-Ito palette).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib import patheffects as pe
from matplotlib.axes import Axes
from matplotlib.colors import Colormap, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.transforms import TransformedPatchPath, offset_copy
from mpl_toolkits.axes_grid1 import make_axes_locatable

from transinv import metrics

ANNOTATE_MAX = 16
"""Grids up to this many cells a side get their values written in the cells."""
LOG_SPACED_RATIO = 50
"""Steps are log-spaced (symlog axis) when max step / smallest non-zero step exceeds this."""
OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000"]
LINESTYLES = ["-", "--", ":", "-."]
TRAINED_COLOUR = "red"
# A white halo keeps the red trained-centre mark visible on every colour of the maps.
HALO = [pe.withStroke(linewidth=4, foreground="white")]


def to_png(fig: Figure, dpi: int = 100) -> bytes:
    """The figure rendered as PNG bytes (Agg, no backend state)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def evaluation_heatmap(
    key: str,
    grid: np.ndarray,
    xs: np.ndarray,
    ys: np.ndarray,
    trained: tuple[int, int] | None,
    phase: str,
    step: int,
    chance: float | None = None,
) -> Figure:
    """One evaluation's grid as a readable map for the MLflow UI: canvas pixels on the axes, a
    colour bar, the trained centre marked, the metric key and the step in the title. Accuracy
    grids use `accuracy_heatmap`'s scale (from just below chance); G grids run -0.2..1."""
    title = f"{key}, {phase} step {step}"
    if metrics.invariance_parts(key) is None:
        fig = accuracy_heatmap(grid, xs, ys, trained, chance or 0.0)
        fig.axes[0].set_title(title)
        return fig
    fig, bar = _canvas_map(grid, xs, ys, trained, Normalize(-0.2, 1.0), colormaps["viridis"], title)
    layer = metrics.invariance_parts(key)[1]
    bar.set_label(f"G at {layer} (0: none, 1: invariant)")
    return fig


# ---------------------------------------------------------------------------------------------
# Heatmaps over the canvas.


def accuracy_heatmap(
    acc: np.ndarray,
    xs: np.ndarray,
    ys: np.ndarray,
    trained: tuple[int, int] | None,
    chance: float,
    title: str = "",
) -> Figure:
    """Accuracy at each test centre, in canvas pixels, y downwards like the image.

    acc: [Gy, Gx], acc[i, j] at centre (xs[j], ys[i]). Colours run from just below chance
    (chance - 0.05, floored at 0) to 1, so anything at chance is dark and visible as such.
    """
    lo = max(chance - 0.05, 0.0)
    fig, bar = _canvas_map(
        acc,
        xs,
        ys,
        trained,
        norm=Normalize(lo, 1.0),
        cmap=colormaps["viridis"],
        title=_title("Accuracy over the canvas", title),
    )
    bar.set_label(f"accuracy (chance {chance:.2g}, dashed)")
    bar.ax.axhline(chance, color="white", linestyle="--", linewidth=1.2)
    return fig


def _canvas_map(
    values: np.ndarray,
    xs: np.ndarray,
    ys: np.ndarray,
    trained: tuple[int, int] | None,
    norm: Normalize,
    cmap: Colormap,
    title: str,
):
    values = np.asarray(values, dtype=np.float64)
    xs, ys = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    if values.shape != (len(ys), len(xs)):
        raise ValueError(
            f"grid shape {values.shape} does not match centres: expected (len(ys), len(xs)) = "
            f"({len(ys)}, {len(xs)})"
        )
    cmap = cmap.with_extremes(bad="0.8")
    # Fixed margins and a divider-made colour bar, not constrained layout: a study renders
    # ~20 of these maps per trial on the trial's own cores, and constrained layout measuring
    # every tick and cell label was half of each map's ~0.75 s.
    fig = Figure(figsize=(6.6, 5.6))
    ax = fig.add_axes((0.10, 0.15, 0.74, 0.78))
    cax = make_axes_locatable(ax).append_axes("right", size="4%", pad=0.12)
    mesh = ax.pcolormesh(_edges(xs), _edges(ys), np.ma.masked_invalid(values), cmap=cmap, norm=norm)
    bar = fig.colorbar(mesh, cax=cax)
    ax.set_aspect("equal")
    ax.invert_yaxis()  # y grows downwards on the canvas
    ax.set_xlabel("item centre x (px)")
    ax.set_ylabel("item centre y (px)")
    ax.set_title(title)
    annotate = max(values.shape) <= ANNOTATE_MAX
    if annotate:
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
        ax.set_yticks(ys, [f"{y:g}" for y in ys])
        ax.tick_params(labelsize=8)
        _annotate_cells(ax, values, xs, ys, norm, cmap, fontsize=min(9.0, 95 / max(values.shape)))
    if trained is not None:
        _mark_trained(ax, xs, ys, trained, on_text=annotate)
    return fig, bar


def _mark_trained(
    ax: Axes, xs: np.ndarray, ys: np.ndarray, trained: tuple[int, int], on_text: bool
) -> None:
    """A red cross at the trained centre; when that centre is a grid cell whose value is
    written in it, a red frame round the cell instead, so the number stays readable."""
    tx, ty = trained
    label = f"trained centre ({tx:g}, {ty:g})"
    col, row = np.flatnonzero(np.isclose(xs, tx)), np.flatnonzero(np.isclose(ys, ty))
    if on_text and col.size and row.size:
        x_edges, y_edges = _edges(xs), _edges(ys)
        j, i = col[0], row[0]
        frame = Rectangle(
            (x_edges[j], y_edges[i]),
            x_edges[j + 1] - x_edges[j],
            y_edges[i + 1] - y_edges[i],
            fill=False,
            edgecolor=TRAINED_COLOUR,
            linewidth=2.2,
            label=label,
            zorder=4,
        )
        frame.set_path_effects(HALO)
        ax.add_patch(frame)
    else:
        ax.plot(
            [tx],
            [ty],
            linestyle="none",
            marker="X",
            markersize=13,
            markerfacecolor=TRAINED_COLOUR,
            markeredgecolor="white",
            markeredgewidth=1.5,
            label=label,
            zorder=4,
        )
    # A fixed distance below the axes, clear of the tick labels and x label whatever the grid's
    # aspect (a fraction of the axes height put it on the label of wide grids).
    below = offset_copy(ax.transAxes, fig=ax.figure, y=-0.5, units="inches")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, 0.0), bbox_transform=below, frameon=False,
              fontsize=9)  # fmt: skip


def _annotate_cells(
    ax: Axes,
    values: np.ndarray,
    xs: Sequence[float],
    ys: Sequence[float],
    norm: Normalize,
    cmap: Colormap,
    fontsize: float,
) -> None:
    # One clip path for all cells: `ax.text` would build one per text from the axes patch,
    # a third of the time of a map with a hundred cells.
    clip = TransformedPatchPath(ax.patch)
    for i, y in enumerate(ys):
        for j, x in enumerate(xs):
            v = values[i, j]
            text = "–" if not np.isfinite(v) else f"{v:.2f}".replace("-0.00", "0.00")
            colour = "black" if not np.isfinite(v) else _text_colour(cmap(norm(v)))
            ax.text(
                x, y, text, ha="center", va="center", fontsize=fontsize, color=colour,
                clip_path=clip,
            )  # fmt: skip


def _text_colour(rgba: tuple[float, ...]) -> str:
    """Black on light cells, white on dark ones (relative luminance of the cell colour)."""
    r, g, b = rgba[:3]
    return "black" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.45 else "white"


def _edges(centres: np.ndarray) -> np.ndarray:
    """Cell boundaries halfway between centres (and as far out at both ends): the grid need
    not be evenly spaced."""
    c = np.asarray(centres, dtype=np.float64)
    if c.size == 1:
        return np.array([c[0] - 0.5, c[0] + 0.5])
    mid = (c[:-1] + c[1:]) / 2
    return np.concatenate([[2 * c[0] - mid[0]], mid, [2 * c[-1] - mid[-1]]])


# ---------------------------------------------------------------------------------------------
# Invariance by layer and curves of one trial.


def invariance_by_layer(scores: Mapping[str, float], title: str = "") -> Figure:
    """I and D (lines) and G (bars) per layer, layers in order of first appearance.

    scores: any metrics mapping; only `invariance/{I,D,G}/<layer>` keys are read, NaNs are left
    out. D beside I because raw cosine of post-ReLU activations is high even for unrelated items.
    """
    layers: list[str] = []
    table: dict[str, dict[str, float]] = {"I": {}, "D": {}, "G": {}}
    for key, value in scores.items():
        quantity, layer = metrics.invariance_parts(key) or ("", "")
        if quantity not in table:
            continue
        if layer not in layers:
            layers.append(layer)
        table[quantity][layer] = float(value)

    fig = Figure(figsize=(max(6.0, 1.0 * len(layers) + 3.0), 4.6), layout="constrained")
    ax = fig.subplots()
    ax.set_title(_title("Invariance by layer", title))
    if not layers:
        _no_data(ax, "no invariance/{I,D,G}/<layer> metrics")
        return fig
    x = np.arange(len(layers))

    def finite(quantity: str) -> tuple[np.ndarray, np.ndarray]:
        vals = np.array([table[quantity].get(layer, math.nan) for layer in layers])
        keep = np.isfinite(vals)
        return x[keep], vals[keep]

    gx, gv = finite("G")
    bars = ax.bar(gx, gv, width=0.55, color=OKABE_ITO[2], alpha=0.45, label="G = (I-D)/(1-D)")
    ax.bar_label(bars, fmt="%.2f", fontsize=8, padding=2)
    references = [
        ax.axhline(1.0, color="0.35", linestyle="--", linewidth=1, zorder=0),
        ax.axhline(0.0, color="0.35", linestyle="-", linewidth=1, zorder=0),
    ]
    for quantity, colour, marker, label in [
        ("I", OKABE_ITO[0], "o", "I: cos(item at T, same item shifted)"),
        ("D", OKABE_ITO[3], "s", "D: cos(item at T, other item shifted)"),
    ]:
        qx, qv = finite(quantity)
        ax.plot(qx, qv, color=colour, marker=marker, linewidth=1.8, label=label)

    ax.set_xticks(x, layers)
    ax.set_xlim(-0.6, len(layers) - 0.4)
    ax.set_xlabel("layer")
    ax.set_ylabel("cosine similarity (I, D) / G")
    present = [v for q in table.values() for v in q.values() if np.isfinite(v)]
    ax.set_ylim(min([-0.1, *present]) - 0.05, max([1.0, *present]) + 0.12)
    handles, labels = ax.get_legend_handles_labels()
    handles += references
    labels += ["G = 1: like an identical copy", "G = 0: like an unrelated item"]
    ax.legend(
        handles,
        labels,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.14),
        ncol=3,
        frameon=False,
        fontsize=8,
    )
    return fig


def forgetting_figure(curves: Mapping[str, Mapping[int, float]], title: str = "") -> Figure:
    """One line per metric key over finetuning steps, its peak starred and its forgetting
    (peak - final, as in `metrics.forgetting`) in the legend.

    curves: metric key -> {finetuning step: value}. The x axis is symlog when the steps are
    log-spaced (max / smallest non-zero step > 50), else linear.
    """
    fig = Figure(figsize=(8.0, 5.0), layout="constrained")
    ax = fig.subplots()
    ax.set_title(_title("Over finetuning", title))
    ax.set_xlabel("finetuning step")
    ax.set_ylabel("value")
    points = {}
    for key, curve in curves.items():
        steps = np.array(sorted(curve), dtype=np.float64)
        values = np.array([float(curve[s]) for s in sorted(curve)])
        keep = np.isfinite(values)
        points[key] = (steps[keep], values[keep])
    all_steps = np.concatenate([s for s, _ in points.values()]) if points else np.array([])
    if all_steps.size == 0:
        _no_data(ax, "no finite curve values")
        return fig

    for n, (key, (steps, values)) in enumerate(points.items()):
        colour, style = _style(n)
        if steps.size == 0:
            ax.plot([], [], color=colour, linestyle=style, label=f"{key} (no finite values)")
            continue
        drop, peak_step = metrics.forgetting({s: float(v) for s, v in curves[key].items()})
        label = f"{key}  (forgetting {drop:.2f} from step {peak_step:g})"
        ax.plot(steps, values, color=colour, linestyle=style, marker=".", label=label)
        peak = values[steps == peak_step][0]
        ax.plot(
            [peak_step],
            [peak],
            linestyle="none",
            marker="*",
            markersize=13,
            color=colour,
            markeredgecolor="black",
            markeredgewidth=0.6,
            zorder=3,
        )

    _step_axis(ax, all_steps)
    every = np.concatenate([v for _, v in points.values()])
    if every.size and every.min() >= 0 and every.max() <= 1:
        ax.set_ylim(-0.05, 1.05)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    handles.append(
        Line2D(
            [],
            [],
            linestyle="none",
            marker="*",
            markersize=11,
            color="0.6",
            markeredgecolor="black",
            markeredgewidth=0.6,
        )
    )
    labels.append("peak of each curve")
    ax.legend(
        handles,
        labels,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.12),
        frameon=False,
        fontsize=8,
        ncol=1 if len(labels) > 4 else 2,
    )
    return fig


# ---------------------------------------------------------------------------------------------


def _title(base: str, title: str) -> str:
    return f"{base}: {title}" if title else base


def _style(n: int) -> tuple[str, str]:
    """Colour and line style of the n-th curve: the palette, then the same with new dashes."""
    return OKABE_ITO[n % len(OKABE_ITO)], LINESTYLES[(n // len(OKABE_ITO)) % len(LINESTYLES)]


def _step_axis(ax: Axes, steps: np.ndarray) -> None:
    """Symlog (linear below 1 so step 0 fits) for log-spaced steps, else linear."""
    steps = steps[np.isfinite(steps)]
    nonzero = np.abs(steps[steps != 0])
    if (
        steps.size
        and steps.min() >= 0
        and nonzero.size
        and (steps.max() / nonzero.min() > LOG_SPACED_RATIO)
    ):
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlim(left=-0.3)  # room for step 0's marker


def _tick(v: object) -> str:
    return f"{v:g}" if isinstance(v, int | float | np.number) else str(v)


def _no_data(ax: Axes, why: str) -> None:
    ax.text(0.5, 0.5, why, transform=ax.transAxes, ha="center", va="center", color="0.4")


def _require_columns(frame: pd.DataFrame, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise KeyError(f"columns {missing} not in the frame; available: {list(frame.columns)}")
