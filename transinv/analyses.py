"""What each study is for: one analysis per claim of the paper (and per question beyond it),
turning a study's runs into tables, figures and checks of the paper's expectations.

An analysis is a function `(StudyData) -> Section`, registered by name in `ANALYSES`; a study
file names the analyses that apply to it (`report: [forgetting]`), and `report.py` writes their
sections as Markdown. Everything comes from MLflow through `results.py` (runs, curves, final
grids): an analysis never touches a server or a file itself.

A check states the paper's expectation, what was measured (mean ± std over seeds, n trials) and
a verdict: `held` when the effect is in the expected direction by more than both a margin and
two standard errors, `partly` when the direction is right but the effect is small or noisy,
`not held` otherwise, `no data` when the study lacks the trials. Questions the paper never
asked get `measured`: a number, not a verdict. Verdicts are what a careful reader would say of
three seeds; they are reported, never asserted by the tests.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from transinv import metrics, plots, study_plots
from transinv.config import KEY_TYPES
from transinv.regimes import point_to_pixel
from transinv.results import curves, final_grids, summarize, with_config

MARGIN = 0.05
"""Smallest difference (in accuracy or G) that counts as an effect."""
NEAR_CHANCE_RATIO = 0.1
"""A transfer ratio below this is 'near chance' away from the trained location."""

HELD, PARTLY, NOT_HELD, NO_DATA, MEASURED = "held", "partly", "not held", "no data", "measured"


@dataclass(frozen=True)
class Check:
    """One expectation and what the study says of it."""

    expectation: str
    measured: str
    verdict: str
    values: dict[str, float] = field(default_factory=dict)
    """The numbers behind the verdict (report.json carries them; tests compare them)."""


@dataclass
class Section:
    analysis: str
    title: str
    question: str
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)
    figures: dict[str, Figure] = field(default_factory=dict)
    """File name (`<name>.png`) -> figure."""
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    headline: str = ""
    """The figure that stands for the section in the README (default: the first)."""

    @property
    def headline_figure(self) -> str | None:
        return self.headline or next(iter(self.figures), None)


@dataclass
class StudyData:
    """A study's finished trials and the means to fetch their curves and grids once."""

    name: str
    runs: pd.DataFrame
    """`results.load_runs` of the study, FINISHED trials only."""
    info: pd.Series
    """`results.study_info`: the parent run."""

    @cached_property
    def conditions(self) -> list[str]:
        """Config keys that vary across the trials, seeds aside: what defines a condition."""
        return [
            c
            for c in self.runs.columns
            if c in KEY_TYPES and c != "seed" and self.runs[c].astype(str).nunique() > 1
        ]

    def curves(self, keys: Sequence[str]) -> pd.DataFrame:
        """Long curves of `keys` (run_id, key, step, value) with the condition columns and seed."""
        missing = [k for k in keys if k not in self._curves]
        if missing and len(self.runs):
            fetched = curves(self.runs, missing)
            for key in missing:
                self._curves[key] = fetched[fetched["key"] == key]
        parts = [self._curves.get(k, _EMPTY_CURVE) for k in keys]
        long = pd.concat(parts, ignore_index=True) if parts else _EMPTY_CURVE
        return with_config(long, self.runs, [*self.conditions, "seed"])

    @cached_property
    def grids(self) -> pd.DataFrame:
        grids = final_grids(self.runs) if len(self.runs) else pd.DataFrame()
        if grids.empty:
            return grids
        return grids.merge(self.runs[["run_id", *self.conditions, "seed"]], on="run_id")

    def __post_init__(self) -> None:
        self._curves: dict[str, pd.DataFrame] = {}


_EMPTY_CURVE = pd.DataFrame(columns=["run_id", "key", "step", "value", "timestamp"])

Analysis = Callable[[StudyData], Section]
ANALYSES: dict[str, Analysis] = {}


def register(name: str) -> Callable[[Analysis], Analysis]:
    def add(fn: Analysis) -> Analysis:
        ANALYSES[name] = fn
        return fn

    return add


# ---------------------------------------------------------------------------------------------
# Numbers and verdicts.


def mean_std(values: pd.Series) -> str:
    """`0.42 ± 0.03 (n=3)`; the spread is the std over replicates."""
    values = values.dropna()
    if values.empty:
        return "no trials"
    std = values.std() if len(values) > 1 else 0.0
    return f"{values.mean():.2f} ± {std:.2f} (n={len(values)})"


def _se(values: pd.Series) -> float:
    return float(values.std() / math.sqrt(len(values))) if len(values) > 1 else 0.0


def compare(
    higher: pd.Series, lower: pd.Series, expectation: str, what: str, margin: float = MARGIN
) -> Check:
    """Expect mean(higher) > mean(lower): held if the gap beats the margin and two standard
    errors (Welch), partly if only its sign is right."""
    higher, lower = higher.dropna(), lower.dropna()
    if higher.empty or lower.empty:
        return Check(expectation, f"{what}: missing trials", NO_DATA)
    diff = float(higher.mean() - lower.mean())
    se = math.hypot(_se(higher), _se(lower))
    verdict = HELD if diff > max(margin, 2 * se) else PARTLY if diff > 0 else NOT_HELD
    measured = f"{what}: {mean_std(higher)} vs {mean_std(lower)}; difference {diff:+.2f}"
    values = {
        "higher_mean": float(higher.mean()),
        "lower_mean": float(lower.mean()),
        "difference": diff,
        "se": se,
        "n_higher": len(higher),
        "n_lower": len(lower),
    }
    return Check(expectation, measured, verdict, values)


def level(
    values: pd.Series,
    bound: float,
    expectation: str,
    what: str,
    above: bool,
    margin: float = 0.0,
) -> Check:
    """Expect mean(values) above (or below) `bound`: held if beyond it by more than both the
    margin and two standard errors, partly if only the mean is beyond it."""
    values = values.dropna()
    if values.empty:
        return Check(expectation, f"{what}: missing trials", NO_DATA)
    mean, se = float(values.mean()), _se(values)
    beyond = (mean - bound) if above else (bound - mean)
    verdict = HELD if beyond > max(margin, 2 * se) else PARTLY if beyond > 0 else NOT_HELD
    measured = f"{what}: {mean_std(values)} ({'>' if above else '<'} {bound:.2f} expected)"
    return Check(expectation, measured, verdict, {"mean": mean, "se": se, "n": len(values)})


def trend(frame: pd.DataFrame, x: str, y: str, expectation: str, what: str) -> Check:
    """Spearman rank correlation of y with x over trials; `measured` (beyond the paper)."""
    data = frame[[x, y]].dropna()
    if len(data) < 3 or data[x].nunique() < 2:
        return Check(expectation, f"{what}: too few trials", NO_DATA)
    rho = float(data[x].rank().corr(data[y].rank()))
    means = data.groupby(x)[y].mean()
    lo, hi = means.index[0], means.index[-1]
    span = f"{means.iloc[0]:.2f} at {x} = {lo:g} to {means.iloc[-1]:.2f} at {hi:g}"
    measured = f"{what}: Spearman rho {rho:+.2f} over {len(data)} trials; mean {span}"
    return Check(expectation, measured, MEASURED, {"rho": rho, "n": len(data)})


def chance_of(runs: pd.DataFrame) -> float:
    if metrics.CHANCE in runs and runs[metrics.CHANCE].notna().any():
        return float(runs[metrics.CHANCE].median())
    return math.nan


def representation_layer(columns: Sequence[str]) -> str | None:
    """The layer whose G stands for 'the representation': the last hidden FC layer, else the
    logits (nets whose pooled features go straight to the head)."""
    layers = [c.split("/", 2)[2] for c in columns if c.startswith("invariance/G/")]
    fc = [name for name in layers if name.startswith("fc")]
    return (sorted(fc)[-1] if fc else None) or ("logits" if "logits" in layers else None)


def _label(frame: pd.DataFrame, keys: Sequence[str]) -> pd.Series:
    """One condition label per row: `freeze=conv lr=0.0001` from the keys' short names."""
    if not keys:
        return pd.Series("all", index=frame.index)
    parts = [frame[k].map(lambda v, k=k: f"{k.split('.')[-1]}={plots._tick(v)}") for k in keys]
    label = parts[0]
    for part in parts[1:]:
        label = label + " " + part
    return label


def _table(study: StudyData, by: Sequence[str], columns: Sequence[str]) -> pd.DataFrame:
    """A condition table for the report: the keys, n, and `mean ± std` per metric."""
    present = [c for c in columns if c in study.runs]
    table = summarize(study.runs, by, present)
    out = table[[*by, "n"]].copy()
    for c in present:
        out[c] = [
            f"{m:.2f} ± {0.0 if math.isnan(s) else s:.2f}" if not math.isnan(m) else "n/a"
            for m, s in zip(table[f"{c} mean"], table[f"{c} std"], strict=True)
        ]
    return out


def _at_step(long: pd.DataFrame, step: int = 0) -> pd.DataFrame:
    return long[long["step"] == step]


def _g_at_start(study: StudyData, layer: str) -> pd.DataFrame:
    """Per run: G of `layer` on the new items before finetuning (finetune step 0)."""
    key = metrics.invariance_key("G", layer)
    start = _at_step(study.curves([key]))
    return start[["run_id", "value"]].rename(columns={"value": f"{key} at step 0"})


def _with_g_at_start(study: StudyData, layer: str | None) -> pd.DataFrame:
    if layer is None:
        return study.runs
    return study.runs.merge(_g_at_start(study, layer), on="run_id", how="left")


def _select(frame: pd.DataFrame, **equals: object) -> pd.DataFrame:
    mask = pd.Series(True, index=frame.index)
    for key, value in equals.items():
        mask &= frame[key.replace("__", ".")] == value
    return frame[mask]


# ---------------------------------------------------------------------------------------------
# Claim 1: not architecturally invariant.

SHIFT_BINS = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0)
"""Shift from the trained centre in item widths, for the fall-off."""


@register("not_invariant")
def not_invariant(study: StudyData) -> Section:
    section = Section(
        "not_invariant",
        "CNNs are not architecturally invariant",
        "Trained from scratch on items at one location, does a CNN recognise them elsewhere?",
    )
    runs = study.runs
    chance = chance_of(runs)
    by = study.conditions
    section.tables.append(
        (
            "Accuracy at and away from the trained location",
            _table(
                study,
                by,
                [metrics.ACC_TRAINED, metrics.ACC_UNTRAINED, metrics.TRANSFER_RATIO,
                 metrics.FRAC_UNTRAINED_GE_HALF],
            ),
        )
    )  # fmt: skip
    section.checks.append(
        level(
            runs[metrics.ACC_TRAINED],
            0.9,
            "learned at the trained location (acc@trained >= 0.9)",
            "acc@trained",
            above=True,
        )
    )
    section.checks.append(
        level(
            runs[metrics.TRANSFER_RATIO],
            NEAR_CHANCE_RATIO,
            f"near chance ({chance:.2f}) at untrained locations: transfer ratio below "
            f"{NEAR_CHANCE_RATIO}",
            f"acc@untrained {mean_std(runs[metrics.ACC_UNTRAINED])}; transfer ratio",
            above=False,
        )
    )
    falloff = _falloff(study)
    if not falloff.empty:
        group = by[0] if by else None
        section.figures["falloff.png"] = study_plots.curves_with_bands(
            falloff, "shift (item widths)", "accuracy", group, "fall-off from the trained centre"
        )
        table = falloff.groupby(["shift (item widths)", *([group] if group else [])])[
            "accuracy"
        ].agg(["mean", "std", "count"])
        section.tables.append(("Accuracy by shift from the trained centre", table.reset_index()))
        near = falloff[
            (falloff["shift (item widths)"] > 0.25) & (falloff["shift (item widths)"] <= 0.5)
        ]
        at = falloff[falloff["shift (item widths)"] <= 0.25]
        section.checks.append(
            compare(
                at.groupby("run_id")["accuracy"].mean(),
                near.groupby("run_id")["accuracy"].mean(),
                "even a shift of a fraction of an item width hurts (within 1/4 item vs 1/4-1/2 "
                "item away)",
                "accuracy within 1/4 item vs at 1/4-1/2 item",
                margin=0.1,
            )
        )
    for name, fig in _mean_heatmaps(study, chance).items():
        section.figures[name] = fig
    return section


def _trained_px(row: pd.Series) -> tuple[int, int]:
    return point_to_pixel(row["finetune.location"], row["canvas.size"], row["canvas.item_size"])


def _falloff(study: StudyData) -> pd.DataFrame:
    """Per run and shift bin: mean accuracy of the final grid's centres in that bin."""
    grids = study.grids
    if grids.empty:
        return pd.DataFrame()
    geometry = study.runs.set_index("run_id")
    rows = []
    for run_id, cells in grids.groupby("run_id"):
        run = geometry.loc[run_id]
        tx, ty = _trained_px(run)
        shift = np.hypot(cells["x"] - tx, cells["y"] - ty) / run["canvas.item_size"]
        bins = pd.cut(shift, SHIFT_BINS, include_lowest=True, right=True)
        for interval, acc in cells["acc"].groupby(bins, observed=True):
            rows.append(
                {
                    "run_id": run_id,
                    **{k: run[k] for k in study.conditions},
                    "shift (item widths)": float(interval.right),
                    "accuracy": float(acc.mean()),
                }
            )
        # The trained centre itself (it may not be on the grid).
        rows.append(
            {
                "run_id": run_id,
                **{k: run[k] for k in study.conditions},
                "shift (item widths)": 0.0,
                "accuracy": float(run[metrics.ACC_TRAINED]),
            }
        )
    return pd.DataFrame(rows)


def _mean_heatmaps(study: StudyData, chance: float) -> dict[str, Figure]:
    """The final accuracy grid averaged over seeds, one heatmap per condition."""
    grids = study.grids
    out: dict[str, Figure] = {}
    if grids.empty:
        return out
    keys = study.conditions
    groups = grids.groupby(keys, sort=True) if keys else [((), grids)]
    for n, (level, cells) in enumerate(groups):
        level = level if isinstance(level, tuple) else (level,)
        first = study.runs[study.runs["run_id"] == cells["run_id"].iloc[0]].iloc[0]
        mean = cells.groupby(["y", "x"])["acc"].mean().unstack("x")
        label = " ".join(
            f"{k.split('.')[-1]}={plots._tick(v)}" for k, v in zip(keys, level, strict=True)
        )
        seeds = cells["run_id"].nunique()
        out[f"heatmap_{n}.png"] = plots.accuracy_heatmap(
            mean.to_numpy(),
            mean.columns.to_numpy(),
            mean.index.to_numpy(),
            _trained_px(first),
            chance if math.isfinite(chance) else 0.0,
            f"{label or study.name}, mean of {seeds} seeds",
        )
    return out


# ---------------------------------------------------------------------------------------------
# Claim 2: learned invariance transfers to new items.


@register("transfer")
def transfer(study: StudyData) -> Section:
    section = Section(
        "transfer",
        "Invariance learned on one item set transfers to new items",
        "Pretrained fully translated on set A, are new items of set B learned at one location "
        "recognised elsewhere, more than by a vanilla network?",
    )
    runs = study.runs
    layer = representation_layer(runs.columns)
    g = metrics.invariance_key("G", layer) if layer else None
    by = ["pretrain.dataset", "finetune.dataset"]
    by = [k for k in by if k in runs]
    columns = [metrics.ACC_TRAINED, metrics.ACC_UNTRAINED, metrics.TRANSFER_RATIO, g]
    section.tables.append(
        ("By pretraining and finetuning set", _table(study, by, [c for c in columns if c]))
    )
    section.figures["transfer.png"] = study_plots.condition_bars(
        runs, "finetune.dataset", metrics.ACC_UNTRAINED, "pretrain.dataset", chance_of(runs)
    )
    for target, rows in runs.groupby("finetune.dataset", sort=True):
        vanilla = rows[rows["pretrain.dataset"] == "none"]
        for source, pretrained in rows[rows["pretrain.dataset"] != "none"].groupby(
            "pretrain.dataset", sort=True
        ):
            section.checks.append(
                compare(
                    pretrained[metrics.ACC_UNTRAINED],
                    vanilla[metrics.ACC_UNTRAINED],
                    f"pretraining on {source} raises acc@untrained on new {target} items above "
                    "vanilla",
                    f"{source} -> {target} vs vanilla -> {target}, acc@untrained",
                )
            )
    return section


# ---------------------------------------------------------------------------------------------
# Claim 3: covering the canvas is not enough.

CONTROL_REGIMES = ("class_region", "exemplar_location", "location")


@register("coverage_controls")
def coverage_controls(study: StudyData) -> Section:
    section = Section(
        "coverage_controls",
        "Covering the canvas is not enough",
        "Does pretraining that puts items everywhere without translating any of them "
        "(class per region, exemplar per location) teach invariance, like full translation?",
    )
    runs = study.runs
    layer = representation_layer(runs.columns)
    frame = _with_g_at_start(study, layer)
    g0 = f"{metrics.invariance_key('G', layer)} at step 0" if layer else None
    columns = [metrics.ACC_TRAINED, metrics.ACC_UNTRAINED, metrics.invariance_key("G", layer or "")]
    table = summarize(frame, ["pretrain.regime"], [c for c in [*columns, g0] if c and c in frame])
    section.tables.append(("By pretraining regime", _format(table, ["pretrain.regime"])))
    section.figures["coverage.png"] = study_plots.condition_bars(
        runs, "pretrain.regime", metrics.ACC_UNTRAINED, chance=chance_of(runs)
    )
    whole = runs[runs["pretrain.regime"] == "whole"]
    for control in CONTROL_REGIMES:
        rows = runs[runs["pretrain.regime"] == control]
        if rows.empty:
            continue
        section.checks.append(
            compare(
                whole[metrics.ACC_UNTRAINED],
                rows[metrics.ACC_UNTRAINED],
                f"`{control}` pretraining gives less invariance than `whole`",
                f"whole vs {control}, acc@untrained",
            )
        )
    return section


def _format(table: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """`summarize` output with `mean ± std` strings per metric."""
    out = table[[*by, "n"]].copy()
    for column in table.columns:
        if column.endswith(" mean"):
            metric = column.removesuffix(" mean")
            std = table[f"{metric} std"].fillna(0.0)
            out[metric] = [
                "n/a" if math.isnan(m) else f"{m:.2f} ± {s:.2f}"
                for m, s in zip(table[column], std, strict=True)
            ]
    return out


# ---------------------------------------------------------------------------------------------
# Claim 4: invariance lives in the representations.


@register("representations")
def representations(study: StudyData) -> Section:
    section = Section(
        "representations",
        "Invariance lives in the representations",
        "Before any finetuning, are the activations of a new item and its translated copy "
        "alike (G near 1) after fully translated pretraining, and unalike (G near 0) otherwise? "
        "In which layer does it appear?",
    )
    runs = study.runs
    keys = [c for c in runs.columns if c.startswith("invariance/G/")]
    layers = [k.split("/", 2)[2] for k in keys]
    start = _at_step(study.curves(keys))
    if start.empty:
        section.checks.append(Check("G per layer before finetuning", "no curves", NO_DATA))
        return section
    by = study.conditions
    start = start.assign(layer=start["key"].str.split("/", n=2).str[2], condition=_label(start, by))
    section.figures["g_by_layer.png"] = study_plots.layer_profile(
        start, "layer", "value", "condition", "new items before finetuning"
    )
    table = start.pivot_table(index="condition", columns="layer", values="value", aggfunc="mean")
    spread = start.pivot_table(index="condition", columns="layer", values="value", aggfunc="std")
    shown = table[[name for name in layers if name in table.columns]].copy()
    for column in shown.columns:
        shown[column] = [
            f"{m:.2f} ± {0.0 if math.isnan(s) else s:.2f}"
            for m, s in zip(table[column], spread[column], strict=True)
        ]
    section.tables.append(
        ("G per layer at finetuning step 0 (mean ± std over seeds)", shown.reset_index())
    )

    layer = representation_layer(keys)
    translated = _fully_translated(start)
    if layer and translated.any():
        at_layer = start[start["layer"] == layer]
        flags = translated.loc[at_layer.index]
        for name, reference in at_layer[flags].groupby("condition"):
            for other, rows in at_layer[~flags].groupby("condition"):
                section.checks.append(
                    compare(
                        reference["value"],
                        rows["value"],
                        f"G({layer}) before finetuning is higher after fully translated "
                        f"pretraining ({name}) than for {other}",
                        f"G({layer}) {name} vs {other}",
                    )
                )
        convs = [name for name in layers if name.startswith("conv")]
        if convs:
            last = start[start["layer"] == convs[-1]]["value"]
            section.checks.append(
                level(
                    last.abs(),
                    0.1,
                    f"flattened conv maps ({convs[-1]}) are equivariant, not invariant: |G| near "
                    "0 in every condition",
                    f"|G({convs[-1]})|",
                    above=False,
                )
            )
        baseline = start[~translated]
        gaps = (
            start[translated].groupby("layer")["value"].mean()
            - baseline.groupby("layer")["value"].mean()
        ).reindex(layers)
        first = next((name for name in layers if gaps.get(name, 0) > 0.2), None)
        section.notes.append(
            "Where invariance appears: "
            + (
                f"first in `{first}` (G above the other conditions by more than 0.2); gaps by "
                "layer: " + ", ".join(f"{n} {v:+.2f}" for n, v in gaps.dropna().items())
                if first
                else "no layer separates fully translated pretraining from the others by 0.2"
            )
        )
    return section


def _fully_translated(frame: pd.DataFrame) -> pd.Series:
    """Rows whose pretraining translated every item over the whole canvas."""
    mask = frame["pretrain.dataset"].ne("none") if "pretrain.dataset" in frame else True
    if "pretrain.regime" in frame:
        regime = frame["pretrain.regime"]
        whole = regime.eq("whole")
        if "pretrain.translation" in frame:
            whole |= regime.eq("translation") & frame["pretrain.translation"].ge(1.0)
        mask = mask & whole
    return pd.Series(mask, index=frame.index).astype(bool)


# ---------------------------------------------------------------------------------------------
# Claim 5: further training erases invariance.


@register("forgetting")
def forgetting(study: StudyData) -> Section:
    section = Section(
        "forgetting",
        "Further training erases invariance (forgetting)",
        "Over finetuning at one location, do untrained-location accuracy, fc-layer G and the "
        "pretraining task fall, and how does that depend on what is frozen and on the "
        "learning rate?",
    )
    runs = study.runs
    layer = representation_layer(runs.columns) or "fc1"
    g = metrics.invariance_key("G", layer)
    keys = [metrics.ACC_UNTRAINED, g, metrics.FORGETTING_PRETRAIN_ACC, metrics.ACC_TRAINED]
    long = study.curves(keys)
    by = [k for k in ("finetune.freeze", "finetune.lr", "optim.lr") if k in study.conditions]
    if long.empty:
        section.checks.append(Check("forgetting curves", "no curves", NO_DATA))
        return section
    long = long.assign(condition=_label(long, by))
    for key in keys:
        name = key.replace("/", "_")
        section.figures[f"{name}.png"] = study_plots.curves_with_bands(
            long[long["key"] == key], "step", "value", "condition", key
        )
    section.headline = f"{g.replace('/', '_')}.png"
    drops = [metrics.drop_key(k) for k in keys[:3]]
    section.tables.append(
        (
            "Forgetting (peak - final) and final accuracy",
            _table(study, by, [*drops, metrics.ACC_TRAINED, g]),
        )
    )
    g_drop = metrics.drop_key(g)
    lr = next((k for k in ("finetune.lr", "optim.lr") if k in runs and runs[k].nunique() > 1), None)
    rates = sorted(runs[lr].unique(), reverse=True) if lr else [None]

    def rows(freeze: str, rate: object = rates[0]) -> pd.DataFrame:
        out = runs[runs["finetune.freeze"] == freeze] if "finetune.freeze" in runs else runs
        return out if lr is None else out[out[lr] == rate]

    trainable = rows("none")
    section.checks.append(
        level(
            trainable[g_drop],
            0.0,
            f"with all layers trainable, G({layer}) falls over finetuning",
            f"G({layer}) drop (peak - final), freeze=none",
            above=True,
            margin=MARGIN,
        )
    )
    section.checks.append(
        level(
            trainable[metrics.drop_key(metrics.FORGETTING_PRETRAIN_ACC)],
            0.0,
            "the pretraining task is forgotten (its accuracy falls)",
            "pretraining-task accuracy drop, freeze=none",
            above=True,
            margin=MARGIN,
        )
    )
    if lr is not None:
        slow = rows("none", rates[-1])
        section.checks.append(
            compare(
                trainable[g_drop],
                slow[g_drop],
                f"a lower learning rate gives a smaller fall of G({layer})",
                f"G({layer}) drop at {lr}={rates[0]:g} vs {rates[-1]:g}",
            )
        )
    if "finetune.freeze" in runs:
        conv = rows("conv")
        others = runs[(runs["finetune.freeze"] != "conv")]
        others = others if lr is None else others[others[lr] == rates[0]]
        if not conv.empty:
            section.checks.append(
                compare(
                    conv[g_drop],
                    others[g_drop],
                    f"frozen convs with trainable FC layers give the largest fall of G({layer})",
                    f"G({layer}) drop, freeze=conv vs the other modes",
                )
            )
        head = rows("all_but_head")
        if not head.empty:
            section.checks.append(
                level(
                    head[g_drop],
                    0.02,
                    f"training only the head keeps G({layer})",
                    f"G({layer}) drop, freeze=all_but_head",
                    above=False,
                )
            )
            section.checks.append(
                compare(
                    trainable[metrics.ACC_TRAINED],
                    head[metrics.ACC_TRAINED],
                    "training only the head under-fits the trained location",
                    "acc@trained, freeze=none vs all_but_head",
                    margin=0.0,
                )
            )
    return section


# ---------------------------------------------------------------------------------------------
# Claim 6: head and stride.


@register("head_and_stride")
def head_and_stride(study: StudyData) -> Section:
    section = Section(
        "head_and_stride",
        "Head and stride: GAP heads and stride-aligned grids",
        "Is a global-average-pooling head more invariant than a flatten head even vanilla, and "
        "do grids whose offsets are multiples of the total stride overstate invariance?",
    )
    runs = study.runs
    by = [k for k in ("model.arch", "pretrain.dataset") if k in runs]
    section.tables.append(
        (
            "Untrained-location accuracy on stride-aligned and other centres",
            _table(
                study,
                by,
                [metrics.ACC_TRAINED, metrics.ACC_UNTRAINED, metrics.ACC_UNTRAINED_ALIGNED,
                 metrics.ACC_UNTRAINED_UNALIGNED],
            ),
        )
    )  # fmt: skip
    long = runs.melt(
        id_vars=["run_id", *by],
        value_vars=[metrics.ACC_UNTRAINED_ALIGNED, metrics.ACC_UNTRAINED_UNALIGNED],
        var_name="centres",
        value_name="acc@untrained",
    )
    long["centres"] = long["centres"].str.rsplit("_", n=1).str[-1]
    long["condition"] = _label(long, by)
    section.figures["stride.png"] = study_plots.condition_bars(
        long, "condition", "acc@untrained", "centres", chance_of(runs)
    )
    gap = runs[runs["model.arch"].str.endswith("_gap")]
    flat = runs[~runs["model.arch"].str.endswith("_gap")]
    section.checks.append(
        compare(
            _select(gap, pretrain__dataset="none")[metrics.ACC_UNTRAINED],
            _select(flat, pretrain__dataset="none")[metrics.ACC_UNTRAINED],
            "a GAP head is more invariant than a flatten head, even vanilla",
            "acc@untrained, vanilla GAP vs vanilla flatten",
        )
    )
    inflation = gap[metrics.ACC_UNTRAINED_ALIGNED] - gap[metrics.ACC_UNTRAINED_UNALIGNED]
    section.checks.append(
        level(
            inflation,
            0.0,
            "with a GAP head, stride-aligned centres overstate invariance",
            "acc@untrained aligned - unaligned, GAP trials",
            above=True,
            margin=0.02,
        )
    )
    return section


# ---------------------------------------------------------------------------------------------
# The zoo.


@register("architectures")
def architectures(study: StudyData) -> Section:
    section = Section(
        "architectures",
        "Architectures: none invariant by construction, each can learn it",
        "For each network of the zoo, is the vanilla net near chance away from the trained "
        "location, and does fully translated pretraining raise it?",
    )
    runs = study.runs
    by = [k for k in ("model.arch", "pretrain.dataset") if k in runs]
    section.tables.append(
        (
            "By architecture",
            _table(study, by, [metrics.ACC_TRAINED, metrics.ACC_UNTRAINED, metrics.TRANSFER_RATIO]),
        )
    )
    section.figures["architectures.png"] = study_plots.condition_bars(
        runs, "model.arch", metrics.ACC_UNTRAINED, "pretrain.dataset", chance_of(runs)
    )
    for arch, rows in runs.groupby("model.arch", sort=True):
        vanilla = rows[rows["pretrain.dataset"] == "none"]
        section.checks.append(
            level(
                vanilla[metrics.TRANSFER_RATIO],
                NEAR_CHANCE_RATIO,
                f"vanilla {arch} is near chance at untrained locations",
                f"{arch} vanilla transfer ratio",
                above=False,
            )
        )
        sources = rows[rows["pretrain.dataset"] != "none"].groupby("pretrain.dataset", sort=True)
        for source, pretrained in sources:
            how = (
                "ImageNet weights teach"
                if source == "imagenet"
                else f"pretraining on {source} teaches"
            )
            section.checks.append(
                compare(
                    pretrained[metrics.ACC_UNTRAINED],
                    vanilla[metrics.ACC_UNTRAINED],
                    f"{how} {arch} invariance",
                    f"{arch} acc@untrained, {source} vs vanilla",
                )
            )
    return section


# ---------------------------------------------------------------------------------------------
# Beyond the paper.


@register("dose_response")
def dose_response(study: StudyData) -> Section:
    section = Section(
        "dose_response",
        "Dose-response: invariance vs pretraining translation range",
        "How does invariance grow with the translation range r of pretraining (r = 0 one "
        "location, r = 1 the whole canvas), per architecture and head?",
    )
    runs = study.runs
    layer = representation_layer(runs.columns)
    frame = _with_g_at_start(study, layer)
    group = "model.arch" if "model.arch" in study.conditions else None
    by = [k for k in (group, "pretrain.translation") if k]
    g0 = f"{metrics.invariance_key('G', layer)} at step 0" if layer else None
    table = summarize(frame, by, [c for c in (metrics.ACC_UNTRAINED, metrics.ACC_TRAINED, g0) if c])
    section.tables.append(("By translation range", _format(table, by)))
    x = "pretrain.translation"
    section.figures["dose_acc_untrained.png"] = study_plots.curves_with_bands(
        frame, x, metrics.ACC_UNTRAINED, group, "after finetuning"
    )
    if g0:
        section.figures["dose_g.png"] = study_plots.curves_with_bands(
            frame, x, g0, group, "new items before finetuning"
        )
    for arch, rows in frame.groupby(group) if group else [("all", frame)]:
        section.checks.append(
            trend(
                rows,
                x,
                metrics.ACC_UNTRAINED,
                f"invariance grows with the translation range ({arch})",
                f"{arch}: acc@untrained vs r",
            )
        )
    return section


@register("duration")
def duration(study: StudyData) -> Section:
    section = Section(
        "duration",
        "Duration surface: pretraining steps x finetuning steps",
        "How do untrained-location accuracy and G depend on how long the network pretrained "
        "and how long it then finetuned at one location?",
    )
    runs = study.runs
    layer = representation_layer(runs.columns) or "fc1"
    keys = [metrics.ACC_UNTRAINED, metrics.invariance_key("G", layer)]
    long = study.curves(keys)
    if long.empty or "pretrain.steps" not in long:
        section.checks.append(Check("duration surface", "no curves", NO_DATA))
        return section
    long = long.rename(columns={"step": "finetune step"})
    for key in keys:
        section.figures[f"surface_{key.replace('/', '_')}.png"] = study_plots.surface_heatmap(
            long[long["key"] == key], "finetune step", "pretrain.steps", "value", key
        )
    section.tables.append(
        (
            "Final accuracy by pretraining steps",
            _table(study, ["pretrain.steps"], [metrics.ACC_UNTRAINED, metrics.ACC_TRAINED]),
        )
    )
    section.checks.append(
        trend(
            runs,
            "pretrain.steps",
            metrics.ACC_UNTRAINED,
            "longer pretraining, more invariance after finetuning",
            "final acc@untrained vs pretraining steps",
        )
    )
    peak = metrics.peak_step_key(metrics.ACC_UNTRAINED)
    if peak in runs:
        early = (runs[peak] < runs["finetune.steps"]).mean()
        section.checks.append(
            Check(
                "untrained-location accuracy often peaks before the end of finetuning",
                f"{early:.0%} of {len(runs)} trials peak before their last step",
                MEASURED,
                {"fraction_early": float(early), "n": len(runs)},
            )
        )
    return section


@register("regime_search")
def regime_search(study: StudyData) -> Section:
    section = Section(
        "regime_search",
        "Regime search: the pretraining regime that transfers best",
        "Which regime (pretraining set, translation range, durations, freeze mode, learning "
        "rate) maximises acc@untrained while still learning the trained location?",
    )
    from transinv.results import best_regimes  # noqa: PLC0415 (keeps the import list short)

    runs = study.runs
    constraints = _constraints(study.info.get("constraints", ""))
    by = study.conditions or ["trial_id"]
    table = best_regimes(runs, metrics.ACC_UNTRAINED, by=by, where=constraints)
    section.tables.append(("Best regimes (mean over seeds, constraint applied)", table.head(5)))
    ordered = runs.sort_values("start_time").reset_index(drop=True)
    ordered["trial"] = np.arange(1, len(ordered) + 1)
    section.figures["search_history.png"] = study_plots.curves_with_bands(
        ordered, "trial", metrics.ACC_UNTRAINED, title="each trial, in launch order"
    )
    if table.empty:
        section.checks.append(Check("a regime satisfies the constraints", "none does", NO_DATA))
        return section
    best = table.iloc[0]
    regime = ", ".join(f"{k}={plots._tick(best[k])}" for k in by)
    spread = f"{best['mean']:.2f} ± {0.0 if math.isnan(best['std']) else best['std']:.2f}"
    section.checks.append(
        Check(
            "the best regime (highest mean acc@untrained with the constraints met)",
            f"{regime}: acc@untrained {spread} over seeds {best.get('seeds', '?')} "
            f"(n={int(best['n'])})",
            MEASURED,
            {"mean": float(best["mean"]), "std": float(best["std"]), "n": int(best["n"])},
        )
    )
    return section


def _constraints(text: str) -> list[tuple[str, str, float]]:
    """`finetune/acc_trained >= 0.9; ...` (the parent run's param) as (metric, op, value)."""
    out = []
    for part in filter(None, (p.strip() for p in str(text or "").split(";"))):
        metric, op, value = part.split()
        out.append((metric, op, float(value)))
    return out
