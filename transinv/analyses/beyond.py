"""Questions the paper never asked: invariance vs the pretraining translation range
(dose-response) and the pretraining x finetuning duration surface; the searches' analyses are
in search.py."""

from __future__ import annotations

import pandas as pd

import transinv.analyses.expectations as ex
from transinv import metrics, stats, study_plots
from transinv.analyses.base import (
    ANALYSES,
    Section,
    StudyData,
    condition_table,
    g_at_start_column,
    judge,
    missing,
    own_task,
    representation_layer,
    with_g_at_start,
)

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
