"""Claims read off accuracy over the canvas: not invariant by architecture (1), transfer of
learned invariance (2), coverage controls (3), head and stride (6), and the zoo."""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

import transinv.analyses.expectations as ex
from transinv import metrics, plots, stats, study_plots
from transinv.analyses.base import (
    ANALYSES,
    NEAR_CHANCE_RATIO,
    Section,
    StudyData,
    against,
    chance_of,
    condition_labels,
    condition_table,
    difference,
    g_at_start_column,
    invariance_level,
    missing,
    own_task,
    representation_layer,
    unique_trials,
    with_g_at_start,
)
from transinv.choices import MODELS
from transinv.regimes import point_to_pixel

LEARNED_TRAINED = ex.declare(
    "not_invariant.learned_trained",
    ex.SANITY,
    "the network learned the trained location (a precondition, not a claim)",
    "acc@trained - 0.9",
    ex.GREATER,
    0.0,
)
NEAR_CHANCE = ex.declare(
    "not_invariant.near_chance",
    ex.PAPER,
    "trained from scratch at one location, a CNN is near chance elsewhere",
    f"transfer ratio - {NEAR_CHANCE_RATIO} (the 'not invariant' level)",
    ex.LESS,
    0.0,
    ex.CLAIM_NOT_INVARIANT,
)
FRACTION_HURTS = ex.declare(
    "not_invariant.fraction_shift_hurts",
    ex.HYPOTHESIS,
    "[PILOT] even a shift of a fraction of an item width hurts",
    "per run, acc@trained - accuracy at centres 1/4-1/2 item away",
    ex.GREATER,
    0.1,
)
TRANSFER_LEARNED = ex.declare(
    "transfer.learned",
    ex.PAPER,
    "fully translated pretraining on set A lets new items of set B learned at one location be "
    "recognised elsewhere",
    "transfer ratio, pretrained - vanilla",
    ex.GREATER,
    NEAR_CHANCE_RATIO,
    ex.CLAIM_LEARNED_SIMPLE,
)
CONTROL_BELOW_WHOLE = ex.declare(
    "coverage_controls.below_whole",
    ex.PAPER,
    "a control pretraining (canvas covered, items not translated) gives less invariance than "
    "`whole`",
    "transfer ratio, whole - control",
    ex.GREATER,
    NEAR_CHANCE_RATIO,
    ex.CLAIM_COVERAGE,
)
CONTROL_LIKE_VANILLA = ex.declare(
    "coverage_controls.like_vanilla",
    ex.PAPER,
    "a control pretraining gives no invariance: its transfer ratio is within the margin of "
    "vanilla's",
    "transfer ratio, control - vanilla",
    ex.WITHIN,
    NEAR_CHANCE_RATIO,
    ex.CLAIM_COVERAGE,
)
GAP_VANILLA = ex.declare(
    "head_and_stride.gap_vanilla",
    ex.HYPOTHESIS,
    "[PILOT] a GAP head is more invariant than a flatten head, even vanilla",
    "acc@untrained, vanilla GAP - vanilla flatten",
    ex.GREATER,
    0.05,
)
ALIGNED_OVERSTATES = ex.declare(
    "head_and_stride.aligned_overstates",
    ex.HYPOTHESIS,
    "[PILOT] with a GAP head, stride-aligned centres overstate invariance",
    "per GAP run, acc@untrained aligned - unaligned",
    ex.GREATER,
    0.02,
)
ARCH_VANILLA = ex.declare(
    "architectures.vanilla_not_invariant",
    ex.PAPER,
    "a vanilla network is near chance at untrained locations",
    f"vanilla transfer ratio - {NEAR_CHANCE_RATIO}",
    ex.LESS,
    0.0,
    ex.CLAIM_NOT_INVARIANT,
)
ARCH_LEARNS = ex.declare(
    "architectures.learns_invariance",
    ex.PAPER,
    "every architecture can learn invariance from fully translated pretraining",
    "transfer ratio, pretrained - vanilla",
    ex.GREATER,
    NEAR_CHANCE_RATIO,
    ex.CLAIM_EVERY_ARCH,
)
OWN_TASK = {
    name: ex.declare(
        f"{name}.pretraining_learned",
        ex.SANITY,
        "the pretraining learned its own task (a control that did not is no control)",
        "pretrain/acc at the end of pretraining - 0.5",
        ex.GREATER,
        0.0,
    )
    for name in ("transfer", "coverage_controls", "architectures")
}

# ---------------------------------------------------------------------------------------------
# Claim 1: not architecturally invariant.

SHIFT_BINS = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0)
"""Shift from the trained centre in item widths, for the fall-off."""


@ANALYSES.register()
def not_invariant(study: StudyData) -> Section:
    section = Section(
        "not_invariant",
        "CNNs are not architecturally invariant",
        "Trained from scratch on items at one location, does a CNN recognise them elsewhere?",
    )
    runs = study.runs
    chance = chance_of(runs)
    by = study.conditions
    columns = [
        metrics.ACC_TRAINED,
        metrics.ACC_UNTRAINED,
        metrics.TRANSFER_RATIO,
        metrics.FRAC_UNTRAINED_GE_HALF,
    ]
    table = condition_table(runs, by, columns)
    section.tables.append(("Accuracy at and away from the trained location", table))
    section.checks.append(against(study, LEARNED_TRAINED, "", runs, runs[metrics.ACC_TRAINED], 0.9))
    section.checks.append(
        against(study, NEAR_CHANCE, "", runs, runs[metrics.TRANSFER_RATIO], NEAR_CHANCE_RATIO)
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
        near = near.groupby("run_id")["accuracy"].mean()
        trained = runs.set_index("run_id")[metrics.ACC_TRAINED]
        shared = near.index.intersection(trained.index)
        section.checks.append(
            against(
                study,
                FRACTION_HURTS,
                "",
                runs[runs["run_id"].isin(shared)],
                trained[shared] - near[shared],
                0.0,
                stats.PAIRED,
            )
        )
    else:
        section.checks.append(missing(study, FRACTION_HURTS, "", "no final grids"))
    for name, fig in _mean_heatmaps(study, chance).items():
        section.figures[name] = fig
    return section


def _trained_px(row: pd.Series) -> tuple[int, int]:
    return point_to_pixel(row["finetune.location"], row["canvas.size"], row["canvas.item_size"])


def _falloff(study: StudyData) -> pd.DataFrame:
    """Per run and shift bin: mean accuracy of the final grid's centres in that bin. The
    trained centre is its own bin (shift 0, acc@trained); grid centres at shift 0 are left out
    of the bins, so no centre counts twice."""
    grids = study.grids
    if grids.empty:
        return pd.DataFrame()
    geometry = study.runs.set_index("run_id")
    rows = []
    for run_id, cells in grids.groupby("run_id"):
        run = geometry.loc[run_id]
        tx, ty = _trained_px(run)
        shift = np.hypot(cells["x"] - tx, cells["y"] - ty) / run["canvas.item_size"]
        bins = pd.cut(shift, SHIFT_BINS, include_lowest=False, right=True)  # (0, 0.25], ...
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
    for n, (values, cells) in enumerate(groups):
        values = values if isinstance(values, tuple) else (values,)
        first = study.runs[study.runs["run_id"] == cells["run_id"].iloc[0]].iloc[0]
        mean = cells.groupby(["y", "x"])["acc"].mean().unstack("x")
        label = " ".join(
            f"{k.split('.')[-1]}={plots._tick(v)}" for k, v in zip(keys, values, strict=True)
        )
        seeds = cells["run_id"].nunique()
        slug = re.sub(r"[^A-Za-z0-9_.=-]+", "_", label.replace(" ", "_")) or str(n)
        out[f"heatmap_{slug}.png"] = plots.accuracy_heatmap(
            mean.to_numpy(),
            mean.columns.to_numpy(),
            mean.index.to_numpy(),
            _trained_px(first),
            chance if math.isfinite(chance) else 0.0,
            f"\n{label or study.name}, mean of {seeds} seeds",  # two lines: long labels fit
        )
    return out


# ---------------------------------------------------------------------------------------------
# Claim 2: learned invariance transfers to new items.


@ANALYSES.register()
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
        (
            "By pretraining and finetuning set",
            condition_table(study.runs, by, [c for c in columns if c]),
        )
    )
    section.figures["transfer.png"] = study_plots.condition_bars(
        runs, "finetune.dataset", metrics.ACC_UNTRAINED, "pretrain.dataset", chance_of(runs)
    )
    for target, rows in runs.groupby("finetune.dataset", sort=True):
        vanilla = unique_trials(rows[rows["pretrain.dataset"] == "none"])
        for source, pretrained in rows[rows["pretrain.dataset"] != "none"].groupby(
            "pretrain.dataset", sort=True
        ):
            section.checks.append(
                _learned(study, TRANSFER_LEARNED, f"{source} -> {target}", pretrained, vanilla)
            )
    own_task(study, section, OWN_TASK["transfer"], ["pretrain.dataset"])
    section.figures.update(_mean_heatmaps(study, chance_of(study.runs)))
    return section


# ---------------------------------------------------------------------------------------------
# Claim 3: covering the canvas is not enough.

CONTROL_REGIMES = ("class_region", "exemplar_location", "location")


@ANALYSES.register()
def coverage_controls(study: StudyData) -> Section:
    section = Section(
        "coverage_controls",
        "Covering the canvas is not enough",
        "Does pretraining that puts items everywhere without translating any of them "
        "(class per region, exemplar per location) teach invariance, like full translation?",
    )
    runs = study.runs
    layer = representation_layer(runs.columns)
    frame = with_g_at_start(study, layer)
    g0 = g_at_start_column(layer)
    columns = [metrics.ACC_TRAINED, metrics.ACC_UNTRAINED, metrics.invariance_key("G", layer or "")]
    by = [k for k in ("pretrain.dataset", "pretrain.regime") if k in study.conditions] or [
        "pretrain.regime"
    ]
    columns.insert(2, metrics.TRANSFER_RATIO)
    table = condition_table(unique_trials(frame), by, [*columns, g0])
    section.tables.append(("By pretraining regime", table))
    pretrained = runs[runs["pretrain.dataset"] != "none"] if "pretrain.dataset" in runs else runs
    vanilla = (
        unique_trials(runs[runs["pretrain.dataset"] == "none"])
        if "pretrain.dataset" in (runs)
        else runs.iloc[:0]
    )
    # Vanilla runs carry an inactive regime: one bar of their own, each trial once, so no
    # regime's bar mixes pretrained and vanilla runs.
    bars = pd.concat(
        [
            pretrained.assign(pretraining=pretrained["pretrain.regime"]),
            vanilla.assign(pretraining="vanilla (none)"),
        ]
    )
    section.figures["coverage.png"] = study_plots.condition_bars(
        bars, "pretraining", metrics.ACC_UNTRAINED, chance=chance_of(runs)
    )
    whole = pretrained[pretrained["pretrain.regime"] == "whole"]
    ratio = metrics.TRANSFER_RATIO
    for control in CONTROL_REGIMES:
        rows = pretrained[pretrained["pretrain.regime"] == control]
        if rows.empty:
            continue
        section.checks.append(difference(study, CONTROL_BELOW_WHOLE, control, whole, rows, ratio))
        if vanilla.empty:
            section.checks.append(
                missing(study, CONTROL_LIKE_VANILLA, control, "no vanilla trials in this study")
            )
        else:
            section.checks.append(
                difference(study, CONTROL_LIKE_VANILLA, control, rows, vanilla, ratio)
            )
    own_task(study, section, OWN_TASK["coverage_controls"], ["pretrain.regime"])
    section.figures.update(_mean_heatmaps(study, chance_of(study.runs)))
    return section


# ---------------------------------------------------------------------------------------------
# Claim 6: head and stride.


@ANALYSES.register()
def head_and_stride(study: StudyData) -> Section:
    section = Section(
        "head_and_stride",
        "Head and stride: GAP heads and stride-aligned grids",
        "Is a global-average-pooling head more invariant than a flatten head even vanilla, and "
        "do grids whose offsets are multiples of the total stride overstate invariance?",
    )
    runs = study.runs
    by = [k for k in ("model.arch", "pretrain.dataset") if k in runs]
    columns = [
        metrics.ACC_TRAINED,
        metrics.ACC_UNTRAINED,
        metrics.ACC_UNTRAINED_ALIGNED,
        metrics.ACC_UNTRAINED_UNALIGNED,
    ]
    table = condition_table(runs, by, columns)
    section.tables.append(
        ("Untrained-location accuracy on stride-aligned and other centres", table)
    )
    long = runs.melt(
        id_vars=["run_id", *by],
        value_vars=[metrics.ACC_UNTRAINED_ALIGNED, metrics.ACC_UNTRAINED_UNALIGNED],
        var_name="centres",
        value_name="acc@untrained",
    )
    long["centres"] = long["centres"].str.rsplit("_", n=1).str[-1]
    long["condition"] = condition_labels(long, by)
    section.figures["stride.png"] = study_plots.condition_bars(
        long, "condition", "acc@untrained", "centres", chance_of(runs)
    )
    # The head kind is a fact of each registered architecture, not something read off its name.
    gap = runs[runs["model.arch"].isin(MODELS.names(head="gap"))]
    flat = runs[runs["model.arch"].isin(MODELS.names(head="flatten"))]
    section.checks.append(
        difference(
            study,
            GAP_VANILLA,
            "",
            gap[gap["pretrain.dataset"] == "none"],
            flat[flat["pretrain.dataset"] == "none"],
            metrics.ACC_UNTRAINED,
        )
    )
    inflation = gap[metrics.ACC_UNTRAINED_ALIGNED] - gap[metrics.ACC_UNTRAINED_UNALIGNED]
    section.checks.append(against(study, ALIGNED_OVERSTATES, "", gap, inflation, 0.0, stats.PAIRED))
    section.figures.update(_mean_heatmaps(study, chance_of(study.runs)))
    return section


# ---------------------------------------------------------------------------------------------
# The zoo.


@ANALYSES.register()
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
            condition_table(
                study.runs, by, [metrics.ACC_TRAINED, metrics.ACC_UNTRAINED, metrics.TRANSFER_RATIO]
            ),
        )
    )
    section.figures["architectures.png"] = study_plots.condition_bars(
        runs, "model.arch", metrics.ACC_UNTRAINED, "pretrain.dataset", chance_of(runs)
    )
    for arch, rows in runs.groupby("model.arch", sort=True):
        vanilla = rows[rows["pretrain.dataset"] == "none"]
        ratio = vanilla[metrics.TRANSFER_RATIO]
        section.checks.append(against(study, ARCH_VANILLA, arch, vanilla, ratio, NEAR_CHANCE_RATIO))
        sources = rows[rows["pretrain.dataset"] != "none"].groupby("pretrain.dataset", sort=True)
        for source, pretrained in sources:
            label = f"{arch}, {source}"
            section.checks.append(_learned(study, ARCH_LEARNS, label, pretrained, vanilla))
    own_task(study, section, OWN_TASK["architectures"], ["model.arch", "pretrain.dataset"])
    return section


def _learned(
    study: StudyData, check_id: str, label: str, pretrained: pd.DataFrame, vanilla: pd.DataFrame
):
    """'Can learn to be invariant', in the paper's terms: the transfer ratio of pretrained runs
    above vanilla's, with the level of invariance the pretrained ratio reaches."""
    check = difference(study, check_id, label, pretrained, vanilla, metrics.TRANSFER_RATIO)
    level = invariance_level(pretrained[metrics.TRANSFER_RATIO])
    return dataclasses.replace(check, level=level, measured=f"{check.measured}; {level}")
