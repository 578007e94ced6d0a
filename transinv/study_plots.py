"""Figures of a study, drawn from the long tables of `results.py`: curves with seed bands,
duration surfaces, condition bars with every seed shown, and invariance profiles by layer.

Same rules as `plots.py` (whose styling they share): matplotlib's object-oriented API only, every
function returns a `Figure`, colour-blind friendly palettes. Replicates are the rows that share
a condition; bands and whiskers span their min to max, so three seeds are three visible points,
not a standard error that hides how few they are.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from transinv.plots import (
    ANNOTATE_MAX,
    OKABE_ITO,
    _annotate_cells,
    _edges,
    _no_data,
    _require_columns,
    _step_axis,
    _style,
    _tick,
    _title,
)


def curves_with_bands(
    frame: pd.DataFrame, x: str, y: str, group: str | None = None, title: str = ""
) -> Figure:
    """Mean of `y` over replicates at each `x`, with a min-max band, one line per `group`.

    frame: a long table, one row per replicate and x (e.g. `results.curves` joined with config
    columns, filtered to one metric key; or `load_runs` for dose-response with x =
    `pretrain.translation`). Every row at the same (group, x) is a replicate (seeds); NaN y
    rows are left out. A step-like x that is log-spaced gets a symlog axis, as in
    `forgetting_figure`.
    """
    _require_columns(frame, [x, y] + ([group] if group else []))
    data = frame[frame[y].notna()]
    fig = Figure(figsize=(7.5, 4.8), layout="constrained")
    ax = fig.subplots()
    ax.set_title(_title(f"{y} vs {x}", title))
    ax.set_xlabel(x)
    ax.set_ylabel(f"{y} (mean, min-max band)")
    if data.empty:
        _no_data(ax, f"no finite {y}")
        return fig

    groups = [(None, data)] if group is None else list(data.groupby(group, dropna=False, sort=True))
    numeric = group is not None and pd.api.types.is_numeric_dtype(data[group])
    for n, (name, rows) in enumerate(groups):
        stats = rows.groupby(x, sort=True)[y].agg(["mean", "min", "max", "count"])
        xv = stats.index.to_numpy(dtype=np.float64)
        if numeric and len(groups) > 1:
            # Ordered levels (a dose, a learning rate) read best as an ordered colour ramp.
            colour, style = colormaps["viridis"](0.85 * n / (len(groups) - 1)), "-"
        else:
            colour, style = _style(n)
        replicates = int(stats["count"].max())
        name = name[0] if isinstance(name, tuple) else name
        label = f"n = {replicates}" if group is None else f"{group} = {name}  (n = {replicates})"
        # Many overlapping bands turn to mud: fainter bands the more lines there are.
        band = 0.2 if len(groups) <= 3 else 0.08
        ax.fill_between(xv, stats["min"], stats["max"], color=colour, alpha=band, linewidth=0)
        ax.plot(
            xv,
            stats["mean"],
            color=colour,
            linestyle=style,
            marker="o" if len(xv) <= 20 else None,
            markersize=4,
            label=label,
        )
    if pd.api.types.is_numeric_dtype(data[x]):
        _step_axis(ax, data[x].to_numpy(dtype=np.float64))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return fig


def surface_heatmap(frame: pd.DataFrame, x: str, y: str, value: str, title: str = "") -> Figure:
    """Mean of `value` in each (x, y) cell (over seeds), as a heatmap with the means written in;
    e.g. x = `finetune.steps`, y = `pretrain.steps`. Axes are the sorted distinct values
    (evenly spaced, whatever their spacing); empty cells are grey."""
    _require_columns(frame, [x, y, value])
    table = frame.pivot_table(index=y, columns=x, values=value, aggfunc="mean", dropna=False)
    table = table.sort_index().sort_index(axis=1)
    means = table.to_numpy(dtype=np.float64)
    size = (max(5.5, 0.9 * means.shape[1] + 3.0), max(4.0, 0.6 * means.shape[0] + 2.2))
    fig = Figure(figsize=size, layout="constrained")
    ax = fig.subplots()
    ax.set_title(_title(f"mean {value}", title))
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    if not np.isfinite(means).any():
        _no_data(ax, f"no finite {value}")
        return fig
    lo, hi = np.nanmin(means), np.nanmax(means)
    norm = Normalize(lo, hi if hi > lo else lo + 1e-9)
    cmap = colormaps["viridis"].with_extremes(bad="0.8")
    cols, rows = np.arange(means.shape[1]), np.arange(means.shape[0])
    mesh = ax.pcolormesh(
        _edges(cols), _edges(rows), np.ma.masked_invalid(means), cmap=cmap, norm=norm
    )
    ax.set_xticks(cols, [_tick(v) for v in table.columns])
    ax.set_yticks(rows, [_tick(v) for v in table.index])
    if max(means.shape) <= 2 * ANNOTATE_MAX:
        _annotate_cells(ax, means, cols, rows, norm, cmap, fontsize=9 if means.size <= 64 else 7)
    fig.colorbar(mesh, ax=ax, label=f"mean {value}")
    return fig


def condition_bars(
    frame: pd.DataFrame,
    x: str,
    y: str,
    hue: str | None = None,
    chance: float | None = None,
    title: str = "",
) -> Figure:
    """Mean of `y` per `x` (and `hue`) as bars, each replicate as a dot on its bar, whiskers
    from min to max; a dashed line at `chance` when given. Levels keep their sorted order."""
    _require_columns(frame, [x, y] + ([hue] if hue else []))
    data = frame[frame[y].notna()]
    xs = sorted(data[x].unique(), key=_order) if not data.empty else []
    hues = sorted(data[hue].unique(), key=_order) if hue and not data.empty else [None]
    # Side by side only where an x has several hue levels; a hue that partitions the x levels
    # (a flag per condition) colours centred bars instead.
    dodge = hue is not None and bool(len(data)) and data.groupby(x)[hue].nunique().max() > 1
    slots = len(hues) if dodge else 1
    fig = Figure(figsize=(min(14.0, max(6.0, 1.1 * len(xs) * slots + 2.5)), 4.6))
    fig.set_layout_engine("constrained")
    ax = fig.subplots()
    ax.set_title(_title(y, title))
    ax.set_xlabel(x)
    ax.set_ylabel(f"{y} (mean; dots: replicates)")
    if data.empty:
        _no_data(ax, f"no finite {y}")
        return fig
    width = 0.8 / slots
    rng = np.random.default_rng(0)  # fixed jitter: the same figure every time
    for j, level in enumerate(hues):
        colour = OKABE_ITO[j % len(OKABE_ITO)]
        rows = data if level is None else data[data[hue] == level]
        label = f"{hue} = {_tick(level)}" if hue else None
        for i, value in enumerate(xs):
            points = rows.loc[rows[x] == value, y].to_numpy(dtype=np.float64)
            if points.size == 0:
                continue
            centre = i - 0.4 + width * (j + 0.5) if dodge else i
            ax.bar(centre, points.mean(), width * 0.9, color=colour, alpha=0.55, label=label)
            label = None  # one legend entry per hue level
            ax.errorbar(
                centre,
                points.mean(),
                yerr=[[points.mean() - points.min()], [points.max() - points.mean()]],
                color="0.2",
                capsize=3,
                linewidth=1,
            )
            jitter = rng.uniform(-0.25, 0.25, points.size) * width
            ax.plot(centre + jitter, points, "o", color="black", markersize=3.5, zorder=3)
    if chance is not None:
        ax.axhline(chance, color="0.35", linestyle="--", linewidth=1, label=f"chance {chance:.2f}")
    labels = [_tick(v) for v in xs]
    ax.set_xticks(range(len(xs)), labels)
    if sum(len(text) for text in labels) > 90:  # long condition names would overlap
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
        for text in ax.get_xticklabels():
            text.set_horizontalalignment("right")
    ax.grid(axis="y", alpha=0.3)
    if hue or chance is not None:
        ax.legend(fontsize=8, loc="best")
    return fig


def layer_profile(
    frame: pd.DataFrame, layer: str, value: str, group: str, title: str = ""
) -> Figure:
    """Mean `value` per layer (x, in order of first appearance) with a min-max band over
    replicates, one line per `group`; reference lines at 0 and 1 (for G)."""
    _require_columns(frame, [layer, value, group])
    data = frame[frame[value].notna()]
    layers = list(dict.fromkeys(data[layer]))
    fig = Figure(figsize=(max(6.5, 0.9 * len(layers) + 3.5), 4.6), layout="constrained")
    ax = fig.subplots()
    ax.set_title(_title(f"{value} by layer", title))
    ax.set_xlabel("layer")
    ax.set_ylabel(f"{value} (mean, min-max band)")
    if data.empty:
        _no_data(ax, f"no finite {value}")
        return fig
    position = {name: i for i, name in enumerate(layers)}
    for n, (name, rows) in enumerate(data.groupby(group, sort=True)):
        stats = rows.groupby(layer, sort=False)[value].agg(["mean", "min", "max", "count"])
        stats = stats.loc[[name_ for name_ in layers if name_ in stats.index]]
        xv = np.array([position[name_] for name_ in stats.index], dtype=np.float64)
        colour, style = _style(n)
        label = f"{_tick(name)}  (n = {int(stats['count'].max())})"
        ax.fill_between(xv, stats["min"], stats["max"], color=colour, alpha=0.2, linewidth=0)
        ax.plot(xv, stats["mean"], color=colour, linestyle=style, marker="o", label=label)
    for level in (0.0, 1.0):
        ax.axhline(level, color="0.35", linestyle="--" if level else "-", linewidth=1, zorder=0)
    ax.set_xticks(range(len(layers)), layers)
    ax.grid(alpha=0.3)
    ax.legend(title=group, fontsize=8, loc="best")
    return fig


def _order(value: object) -> tuple[int, object]:
    """Sort numbers numerically and names alphabetically, numbers first."""
    if isinstance(value, int | float | np.number):
        return (0, float(value))
    return (1, str(value))


def importance_bars(table: pd.DataFrame, title: str = "") -> Figure:
    """One horizontal bar chart per importance evaluator (`results.importance`: columns
    `param`, `ped_anova`, `fanova`), keys in the table's order, `seed` (the null reference) in
    grey with a dashed line at its importance: a key below that line is noise at this budget."""
    evaluators = [c for c in ("ped_anova", "fanova") if c in table.columns]
    _require_columns(table, ["param", *evaluators])
    fig = Figure(figsize=(4.2 * max(1, len(evaluators)), 0.45 * len(table) + 1.8))
    fig.set_layout_engine("constrained")
    axes = np.atleast_1d(fig.subplots(1, max(1, len(evaluators)), sharey=True))
    metric = table.attrs.get("metric", "")
    fig.suptitle(_title(f"importance for {metric}".strip(), title))
    if table.empty or not evaluators:
        _no_data(axes[0], "no importances")
        return fig
    rows = table.iloc[::-1]  # the first key on top
    colours = ["0.6" if p == "seed" else OKABE_ITO[0] for p in rows["param"]]
    for ax, evaluator in zip(axes, evaluators, strict=False):
        ax.barh(range(len(rows)), rows[evaluator], color=colours)
        seed = rows.loc[rows["param"] == "seed", evaluator]
        if len(seed):
            ax.axvline(float(seed.iloc[0]), color="0.35", linestyle="--", linewidth=1)
        ax.set_title({"ped_anova": "PED-ANOVA", "fanova": "fANOVA"}[evaluator])
        ax.set_xlabel("importance (normalized)")
        ax.set_yticks(range(len(rows)), list(rows["param"]))
        ax.grid(axis="x", alpha=0.3)
    return fig


def pareto_scatter(
    conditions: pd.DataFrame, x: str, y: str, label: str | None = None, title: str = ""
) -> Figure:
    """Two objectives of `results.pareto(..., dominated=True)`: every condition at its means
    with std whiskers, the front highlighted and joined; `label` (a condition key) names the
    front's points."""
    columns = [f"{x} mean", f"{y} mean", "pareto"]
    _require_columns(conditions, columns + ([label] if label else []))
    modes = dict(conditions.attrs.get("objectives", []))
    fig = Figure(figsize=(6.8, 5.0), layout="constrained")
    ax = fig.subplots()
    ax.set_title(_title("Pareto front", title))
    ax.set_xlabel(f"{x} ({modes.get(x, '?')}; mean ± std)")
    ax.set_ylabel(f"{y} ({modes.get(y, '?')}; mean ± std)")
    if conditions.empty:
        _no_data(ax, "no conditions")
        return fig
    for on_front, colour, name in ((False, "0.65", "dominated"), (True, OKABE_ITO[3], "front")):
        rows = conditions[conditions["pareto"] == on_front]
        if rows.empty:
            continue
        ax.errorbar(
            rows[f"{x} mean"], rows[f"{y} mean"],
            xerr=rows.get(f"{x} std"), yerr=rows.get(f"{y} std"),
            fmt="o", color=colour, ecolor=colour, alpha=0.9 if on_front else 0.6,
            capsize=2, linewidth=1, label=f"{name} ({len(rows)})",
        )  # fmt: skip
    front = conditions[conditions["pareto"]].sort_values(f"{x} mean")
    ax.plot(front[f"{x} mean"], front[f"{y} mean"], color=OKABE_ITO[3], linewidth=1)
    if label:
        for _, row in front.iterrows():
            ax.annotate(_tick(row[label]), (row[f"{x} mean"], row[f"{y} mean"]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return fig


def search_curves(
    frame: pd.DataFrame, hue: str = "sampler", run: str = "search seed", target: float | None = None
) -> Figure:
    """Best feasible value so far vs trials (`results.best_so_far`, one table per search,
    stacked with `hue` and `run` columns): each search a thin step line, the mean over the
    searches of each `hue` level a thick one (drawn from the trial where every search of that
    level has a feasible value); a dashed line at `target` when given."""
    _require_columns(frame, ["trial", "best", hue, run])
    metric = frame.attrs.get("metric", "best feasible value")
    fig = Figure(figsize=(7.2, 4.6), layout="constrained")
    ax = fig.subplots()
    ax.set_title(f"{metric}: best feasible so far")
    ax.set_xlabel("trials run")
    ax.set_ylabel(f"best feasible {metric}")
    if frame["best"].notna().sum() == 0:
        _no_data(ax, "no feasible trial")
        return fig
    for j, level in enumerate(sorted(frame[hue].unique(), key=_order)):
        colour = OKABE_ITO[j % len(OKABE_ITO)]
        rows = frame[frame[hue] == level]
        for _, search in rows.groupby(run):
            ax.step(search["trial"], search["best"], where="post", color=colour, alpha=0.35,
                    linewidth=1)  # fmt: skip
        wide = rows.pivot_table(index="trial", columns=run, values="best", dropna=False)
        mean = wide.mean(axis=1).where(wide.notna().all(axis=1))
        ax.step(mean.index, mean, where="post", color=colour, linewidth=2.4,
                label=f"{level} (mean of {wide.shape[1]})")  # fmt: skip
    if target is not None:
        ax.axhline(target, color="0.35", linestyle="--", linewidth=1, label=f"target {target:g}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return fig
