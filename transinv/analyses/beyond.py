"""Questions the paper never asked: invariance vs the pretraining translation range
(dose-response), the pretraining x finetuning duration surface, and the regime search."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from transinv import metrics, plots, study_plots
from transinv.analyses.base import (
    MEASURED,
    NO_DATA,
    Check,
    Section,
    StudyData,
    chance_of,
    condition_table,
    g_at_start_column,
    register,
    representation_layer,
    trend,
    with_g_at_start,
)
from transinv.constraints import Constraint, from_json
from transinv.results import best_regimes

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
    frame = with_g_at_start(study, layer)
    group = "model.arch" if "model.arch" in study.conditions else None
    by = [k for k in (group, "pretrain.translation") if k]
    g0 = g_at_start_column(layer)
    table = condition_table(frame, by, [metrics.ACC_UNTRAINED, metrics.ACC_TRAINED, g0])
    section.tables.append(("By translation range", table))
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
            condition_table(
                study.runs, ["pretrain.steps"], [metrics.ACC_UNTRAINED, metrics.ACC_TRAINED]
            ),
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
    runs = study.runs
    constraints = from_json(study.info.get("constraints"))  # as the study file gave them
    by = study.conditions or ["trial_id"]
    table = best_regimes(runs, metrics.ACC_UNTRAINED, by=by, where=constraints)
    section.tables.append(("Best regimes (mean over seeds, constraint applied)", table.head(5)))
    section.figures["search_history.png"] = study_plots.condition_bars(
        _suggestions(runs, by, constraints),
        "suggestion",
        metrics.ACC_UNTRAINED,
        "constraints met",
        chance_of(runs),
        "each suggestion in launch order, its seeds as dots",
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


def _suggestions(
    runs: pd.DataFrame, by: list[str], constraints: Sequence[Constraint]
) -> pd.DataFrame:
    """The runs with `suggestion` (1, 2, ... in launch order of each regime's first seed) and
    `constraints met` (by the regime's mean, as in `best_regimes`)."""
    keys = runs[by].astype(str).agg(" ".join, axis=1)
    first = runs.assign(key=keys).groupby("key")["start_time"].min().sort_values()
    order = {key: n + 1 for n, key in enumerate(first.index)}
    frame = runs.assign(suggestion=keys.map(order))
    met = pd.Series(True, index=frame.index)
    for constraint in constraints:
        met &= constraint.test(frame.groupby("suggestion")[constraint.metric].transform("mean"))
    return frame.assign(**{"constraints met": met.map({True: "yes", False: "no"})})
