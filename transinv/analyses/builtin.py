"""Built-in vs learned invariance (issue 16, `search_spaces/builtin_vs_learned.yaml`): networks
made shift-invariant by design (anti-aliased down-sampling, `model.antialias` blur or aps, with
circular padding) beside invariance learned from fully translated pretraining, for new items
learned at one location.

Two questions, both ours (`hypothesis` checks; the paper never tested designed invariance):
(a) does designed invariance make pretraining unnecessary for new items at untrained
locations? (b) Lee et al.'s hypothesis: anti-aliasing helps local invariance (shifts below one
item width near the trained centre, and one-pixel jaggedness) but not global invariance (centres
one item width or more away). (b) is judged on vanilla nets, where no learned invariance
confounds the architecture. That a vanilla aps + circular + GAP net is as accurate everywhere as
at the trained centre is true by construction: a `sanity` check of the instrument.
"""

from __future__ import annotations

import pandas as pd

from transinv import metrics, stats, study_plots
from transinv.analyses.base import (
    ANALYSES,
    Section,
    StudyData,
    against,
    chance_of,
    condition_labels,
    condition_table,
    difference,
    missing,
    own_task,
)
from transinv.analyses.expectations import GREATER, HYPOTHESIS, LESS, SANITY, WITHIN, declare
from transinv.choices import MODELS

NAME = "builtin_vs_learned"
DESIGNED = declare(
    f"{NAME}.designed_vs_learned",
    HYPOTHESIS,
    "built-in invariance without pretraining beats learned invariance: a vanilla aps + GAP net "
    "is more accurate at untrained locations than a `whole`-pretrained plain flatten net",
    "acc@untrained, vanilla aps+gap - whole-pretrained none+flatten",
    GREATER,
    0.05,
)
UNNEEDED = declare(
    f"{NAME}.pretraining_unneeded",
    HYPOTHESIS,
    "with built-in invariance, pretraining adds nothing at untrained locations: whole-"
    "pretrained and vanilla aps + GAP nets are equally accurate there",
    "acc@untrained, whole-pretrained aps+gap - vanilla aps+gap",
    WITHIN,
    0.05,
)
EXACT = declare(
    f"{NAME}.aps_gap_exact",
    SANITY,
    "a vanilla aps + circular + GAP net is as accurate at untrained locations as at the trained "
    "one (exactly invariant to circular shifts: true by construction)",
    "per run, acc@trained - acc@untrained",
    WITHIN,
    0.02,
)
LOCAL = declare(
    f"{NAME}.blur_helps_local",
    HYPOTHESIS,
    "[Lee et al.] anti-aliasing helps local invariance: a vanilla blur net beats its plain twin "
    "at centres closer than one item width",
    "finetune/acc_near, vanilla blur - vanilla none",
    GREATER,
    0.05,
)
SMOOTH = declare(
    f"{NAME}.blur_less_jagged",
    HYPOTHESIS,
    "[Lee et al.] anti-aliasing makes the output less jagged under one-pixel moves at the "
    "trained centre",
    "finetune/jaggedness, vanilla blur - vanilla none",
    LESS,
    0.02,
)
GLOBAL = declare(
    f"{NAME}.blur_not_global",
    HYPOTHESIS,
    "[Lee et al.] anti-aliasing does not help global invariance: vanilla blur and plain nets "
    "are equally accurate at centres one item width or more away",
    "acc@untrained, vanilla blur - vanilla none",
    WITHIN,
    0.05,
)
OWN_TASK = declare(
    f"{NAME}.pretraining_learned",
    SANITY,
    "the pretraining learned its own task (a control that did not is no control)",
    "pretrain/acc at the end of pretraining - 0.5",
    GREATER,
    0.0,
)

HEAD = "head"
START = "start"
COLUMNS = [
    metrics.ACC_TRAINED,
    metrics.ACC_NEAR,
    metrics.ACC_UNTRAINED,
    metrics.TRANSFER_RATIO,
    metrics.JAGGEDNESS,
    metrics.JAGGEDNESS_UNTRAINED,
    metrics.invariance_key("nway", "fc1"),
    metrics.invariance_key("cos", "fc1"),
    metrics.invariance_key("G", "fc1"),
]


def _with_factors(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs with `head` (the architecture's registered head kind) and `start` (vanilla or the
    pretraining set) columns."""
    out = runs.copy()
    arch = out["model.arch"] if "model.arch" in out else pd.Series("small_cnn", index=out.index)
    out[HEAD] = arch.map(lambda a: MODELS.facts(a)["head"] if a in MODELS else "?")
    data = out["pretrain.dataset"] if "pretrain.dataset" in out else "glyphs"
    out[START] = pd.Series(data, index=out.index).map(lambda d: "vanilla" if d == "none" else d)
    if "model.antialias" not in out:
        out["model.antialias"] = "none"
    return out


def _rows(frame: pd.DataFrame, antialias: str, head: str, vanilla: bool) -> pd.DataFrame:
    start = frame[START] == "vanilla"
    return frame[
        (frame["model.antialias"] == antialias)
        & (frame[HEAD] == head)
        & (start if vanilla else ~start)
    ]


@ANALYSES.register()
def builtin_vs_learned(study: StudyData) -> Section:
    section = Section(
        NAME,
        "Built-in vs learned invariance: anti-aliased nets beside translated pretraining",
        "Does a network made shift-invariant by design (blur or adaptive polyphase sampling, "
        "circular padding) make pretraining unnecessary for new items at untrained locations, "
        "and does anti-aliasing help local but not global invariance (Lee et al.)?",
    )
    frame = _with_factors(study.runs)
    by = ["model.antialias", HEAD, START]
    section.tables.append(
        ("Accuracy, jaggedness and invariance by condition", condition_table(frame, by, COLUMNS))
    )
    long = frame.melt(
        id_vars=["run_id", *by],
        value_vars=[c for c in (metrics.ACC_NEAR, metrics.ACC_UNTRAINED) if c in frame],
        var_name="centres",
        value_name="accuracy",
    )
    if not long.empty:
        long["centres"] = long["centres"].map(
            {metrics.ACC_NEAR: "near (< 1 item)", metrics.ACC_UNTRAINED: "far (>= 1 item)"}
        )
        long["condition"] = condition_labels(long, by)
        section.figures["local_global.png"] = study_plots.condition_bars(
            long, "condition", "accuracy", "centres", chance_of(frame), "new items, end"
        )

    # (a) Designed invariance vs pretraining.
    aps_gap = _rows(frame, "aps", "gap", vanilla=True)
    learned = _rows(frame, "none", "flatten", vanilla=False)
    section.checks.append(
        difference(study, DESIGNED, "", aps_gap, learned, metrics.ACC_UNTRAINED)
        if len(aps_gap) and len(learned)
        else missing(study, DESIGNED, "", "needs vanilla aps+gap and pretrained none+flatten")
    )
    aps_gap_pre = _rows(frame, "aps", "gap", vanilla=False)
    section.checks.append(
        difference(study, UNNEEDED, "", aps_gap_pre, aps_gap, metrics.ACC_UNTRAINED)
        if len(aps_gap_pre) and len(aps_gap)
        else missing(study, UNNEEDED, "", "needs pretrained and vanilla aps+gap")
    )
    if len(aps_gap) and {metrics.ACC_TRAINED, metrics.ACC_UNTRAINED} <= set(aps_gap):
        gap = aps_gap[metrics.ACC_TRAINED].astype(float) - aps_gap[metrics.ACC_UNTRAINED]
        section.checks.append(against(study, EXACT, "", aps_gap, gap, 0.0, stats.PAIRED))
    else:
        section.checks.append(missing(study, EXACT, "", "needs vanilla aps+gap runs"))

    # (b) Lee et al.: local, not global, on vanilla nets.
    for head in ("flatten", "gap"):
        blur, plain = _rows(frame, "blur", head, True), _rows(frame, "none", head, True)
        for check, column in (
            (LOCAL, metrics.ACC_NEAR),
            (SMOOTH, metrics.JAGGEDNESS),
            (GLOBAL, metrics.ACC_UNTRAINED),
        ):
            if len(blur) and len(plain):
                section.checks.append(difference(study, check, head, blur, plain, column))
            else:
                section.checks.append(missing(study, check, head, "needs vanilla blur and none"))
    own_task(study, section, OWN_TASK, ["model.antialias", "model.arch"])
    section.notes.append(
        "All nets use circular padding (`model.padding`), so the down-sampling is the only "
        "factor; `near` centres are grid centres closer than one item width to the trained one "
        "(itself excluded), `far` ones an item width or more away. Jaggedness is the "
        "probability that the top class changes under a one-pixel move (Azulay & Weiss 2019)."
    )
    return section
