"""Questions the paper never asked: invariance vs the pretraining translation range
(dose-response), the pretraining x finetuning duration surface, and the regime search."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

import transinv.analyses.expectations as ex
from transinv import metrics, plots, stats, study_plots
from transinv.analyses.base import (
    ANALYSES,
    Section,
    StudyData,
    chance_of,
    condition_table,
    g_at_start_column,
    judge,
    missing,
    own_task,
    representation_layer,
    with_g_at_start,
)
from transinv.constraints import Constraint, from_json
from transinv.results import best_regimes

DOSE_GROWS = ex.declare(
    "dose_response.grows",
    ex.HYPOTHESIS,
    "invariance grows with the pretraining translation range",
    "Spearman rho of final acc@untrained with r",
    ex.GREATER,
    0.3,
)
DOSE_OWN_TASK = ex.declare(
    "dose_response.pretraining_learned",
    ex.SANITY,
    "the pretraining learned its own task",
    "pretrain/acc at the end of pretraining - 0.5",
    ex.GREATER,
    0.0,
)
LONGER_MORE = ex.declare(
    "duration.longer_more",
    ex.HYPOTHESIS,
    "longer pretraining, more invariance after finetuning",
    "Spearman rho of final acc@untrained with pretraining steps",
    ex.GREATER,
    0.3,
)
PEAKS_EARLY = ex.declare(
    "duration.peaks_early",
    ex.HYPOTHESIS,
    "[PILOT] acc@untrained often (in more than half the runs) peaks before the end of "
    "finetuning; a run counts only if its peak is strictly above its final value (ties do not)",
    "fraction of runs with peak > final - 0.5",
    ex.GREATER,
    0.0,
)
BEST_REGIME = ex.declare(
    "regime_search.best",
    ex.HYPOTHESIS,
    "the best regime (highest mean acc@untrained with the constraints met)",
    "mean acc@untrained of the best regime",
    ex.NONE,
    0.0,
)


def trend(study: StudyData, check_id: str, label: str, frame: pd.DataFrame, x: str, y: str):
    """Spearman's rho of y with x over runs, bootstrap CI over runs, permutation p."""
    data = frame[["run_id", x, y]].dropna()
    estimate = stats.spearman(data[x].to_numpy(float), data[y].to_numpy(float))
    means = data.groupby(x)[y].mean()
    span = (
        f"mean {means.iloc[0]:.2f} at {x} = {means.index[0]:g} to {means.iloc[-1]:.2f} at "
        f"{means.index[-1]:g}; rho {estimate.effect:+.2f} over {len(data)} runs"
        if len(means) > 1
        else "fewer than two values of x"
    )
    return judge(study, check_id, label, estimate, data["run_id"], span)


# ---------------------------------------------------------------------------------------------
# Beyond the paper.


@ANALYSES.register()
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
        section.checks.append(trend(study, DOSE_GROWS, str(arch), rows, x, metrics.ACC_UNTRAINED))
    own_task(study, section, DOSE_OWN_TASK, [k for k in (group, x) if k])
    return section


@ANALYSES.register()
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
        for check_id in (LONGER_MORE, PEAKS_EARLY):
            section.checks.append(missing(study, check_id, "", "no curves"))
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
        trend(study, LONGER_MORE, "", runs, "pretrain.steps", metrics.ACC_UNTRAINED)
    )
    drop = metrics.drop_key(metrics.ACC_UNTRAINED)
    if drop in runs:
        # peak - final is 0 for a curve whose maximum is (also) its last point: a tie is not an
        # early peak. Accuracies are counts over the same items, so ties are exact.
        drops = runs[drop].dropna()
        early = int((drops > 1e-9).sum())
        estimate = stats.fraction(early, len(drops), 0.5)
        measured = f"{early} of {len(drops)} runs peak strictly above their final value"
        section.checks.append(judge(study, PEAKS_EARLY, "", estimate, runs["run_id"], measured))
    else:
        section.checks.append(missing(study, PEAKS_EARLY, "", f"no {drop}"))
    return section


@ANALYSES.register()
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
        section.checks.append(missing(study, BEST_REGIME, "", "no regime meets the constraints"))
        return section
    best = table.iloc[0]
    regime = ", ".join(f"{k}={plots._tick(best[k])}" for k in by)
    spread = f"{best['mean']:.2f} ± {0.0 if math.isnan(best['std']) else best['std']:.2f}"
    n = int(best["n"])
    estimate = stats.Estimate(
        float(best["mean"]),
        math.nan,
        math.nan,
        math.nan,
        (n,),
        "mean over seeds",
        {"mean": float(best["mean"]), "std": float(best["std"])},
    )
    measured = f"{regime}: {spread} over seeds {best.get('seeds', '?')} (n={n})"
    section.checks.append(judge(study, BEST_REGIME, "", estimate, [], measured))
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
