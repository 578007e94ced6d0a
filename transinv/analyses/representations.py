"""Claims read off the representations: per-layer G of new items before finetuning (4), and
its fall, with the pretraining task's, over finetuning (5)."""

from __future__ import annotations

import math

import pandas as pd

import transinv.analyses.expectations as ex
from transinv import metrics, stats, study_plots
from transinv.analyses.base import (
    ANALYSES,
    Section,
    StudyData,
    against,
    at_step,
    condition_labels,
    condition_table,
    difference,
    missing,
    representation_layer,
    unique_trials,
)

G_VS_VANILLA = ex.declare(
    "representations.g_vs_vanilla",
    ex.PAPER,
    "before finetuning, G of new items in the representation layer is higher after fully "
    "translated pretraining than for a vanilla network",
    "G(representation layer) at finetuning step 0, fully translated - vanilla",
    ex.GREATER,
    0.1,
    ex.CLAIM_REPRESENTATIONS,
)
G_VS_CONTROL = ex.declare(
    "representations.g_vs_control",
    ex.HYPOTHESIS,
    "[PILOT] before finetuning, G in the representation layer is higher after fully "
    "translated pretraining than after a pretraining that translates no item",
    "G(representation layer) at finetuning step 0, fully translated - other pretraining",
    ex.GREATER,
    0.1,
)
CONV_EQUIVARIANT = ex.declare(
    "representations.conv_equivariant",
    ex.SANITY,
    "flattened conv maps are equivariant, not invariant: G(last conv) near 0 at shifts of an "
    "item width or more (close to true by construction)",
    "G(last conv) at finetuning step 0, all runs",
    ex.WITHIN,
    0.1,
)
G_FALLS = ex.declare(
    "forgetting.g_falls",
    ex.PAPER,
    "with all layers trainable, G of new items in the representation layer falls over finetuning",
    "per run, final G - G at finetuning step 0 (freeze=none)",
    ex.LESS,
    0.05,
    ex.CLAIM_FORGETTING,
)
TRUNK_ERASES = ex.declare(
    "forgetting.trunk_training_erases",
    ex.PAPER,
    "training the trunk at one location replaces the invariant features: final acc@untrained "
    "is higher when only the head trains than when all layers train",
    "final acc@untrained, freeze=all_but_head - freeze=none",
    ex.GREATER,
    0.1,
    ex.CLAIM_FORGETTING,
)
ACC_FALLS = ex.declare(
    "forgetting.acc_untrained_falls",
    ex.PAPER,
    "with all layers trainable, acc@untrained falls from its peak more than when only the "
    "head trains (the same statistic, the trunk unchanged, as the null)",
    "acc@untrained peak - final, freeze=none - freeze=all_but_head",
    ex.GREATER,
    0.05,
    ex.CLAIM_FORGETTING,
)
PRETRAIN_FORGOTTEN = ex.declare(
    "forgetting.pretrain_task_forgotten",
    ex.HYPOTHESIS,
    "[PILOT] the pretraining task is forgotten with all layers trainable",
    "per run, final - step-0 pretraining-task accuracy (freeze=none)",
    ex.LESS,
    0.05,
)
LOWER_LR = ex.declare(
    "forgetting.lower_lr_smaller_fall",
    ex.HYPOTHESIS,
    "[PILOT] a lower learning rate gives a smaller fall of G",
    "fall of G (step 0 - final), higher lr - lower lr (freeze=none)",
    ex.GREATER,
    0.05,
)
CONV_LARGEST = ex.declare(
    "forgetting.frozen_conv_largest_fall",
    ex.HYPOTHESIS,
    "[PILOT] frozen convs with trainable FC layers give the largest fall of G",
    "fall of G (step 0 - final), freeze=conv - the other trainable mode",
    ex.GREATER,
    0.05,
)
HEAD_KEEPS = ex.declare(
    "forgetting.head_only_keeps_g",
    ex.SANITY,
    "training only the head keeps G (true by construction: the trunk is frozen, in eval mode)",
    "fall of G (step 0 - final), freeze=all_but_head",
    ex.WITHIN,
    0.02,
)
HEAD_UNDERFITS = ex.declare(
    "forgetting.head_only_underfits",
    ex.HYPOTHESIS,
    "[PILOT] training only the head under-fits the trained location",
    "final acc@trained, freeze=none - freeze=all_but_head",
    ex.GREATER,
    0.05,
)

# ---------------------------------------------------------------------------------------------
# Claim 4: invariance lives in the representations.


@ANALYSES.register()
def representations(study: StudyData) -> Section:
    section = Section(
        "representations",
        "Invariance lives in the representations",
        "Before any finetuning, are the activations of a new item and its translated copy "
        "alike (G near 1) after fully translated pretraining, and unalike (G near 0) otherwise? "
        "In which layer does it appear?",
    )
    runs = study.runs
    layer_of = metrics.layers_of(runs.columns)
    layers = list(layer_of.values())
    start = at_step(study.curves(list(layer_of)))
    if start.empty:
        for check_id in (G_VS_VANILLA, CONV_EQUIVARIANT):
            section.checks.append(missing(study, check_id, "", "no G curves"))
        return section
    by = study.conditions
    start = start.assign(layer=start["key"].map(layer_of), condition=condition_labels(start, by))
    if "pretrain.dataset" in start:
        # A vanilla start ignores the pretraining keys a grid may cross it with: one condition.
        start.loc[start["pretrain.dataset"].eq("none"), "condition"] = "vanilla"
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

    layer = representation_layer(list(layer_of))
    translated = _fully_translated(start)
    if layer and translated.any():
        at_layer = start[start["layer"] == layer]
        flags = translated.loc[at_layer.index]
        vanilla = (
            at_layer["pretrain.dataset"].eq("none")
            if "pretrain.dataset" in at_layer
            else (pd.Series(False, index=at_layer.index))
        )
        for name, reference in at_layer[flags].groupby("condition"):
            for other, rows in at_layer[~flags].groupby("condition"):
                is_vanilla = bool(vanilla.loc[rows.index].all())
                check_id = G_VS_VANILLA if is_vanilla else G_VS_CONTROL
                rows = _one_per_trial(study, rows) if is_vanilla else rows
                label = f"{name} vs {other}"
                section.checks.append(difference(study, check_id, label, reference, rows, "value"))
        convs = [name for name in layers if name.startswith("conv")]
        if convs:
            last = start[start["layer"] == convs[-1]]
            section.checks.append(
                against(study, CONV_EQUIVARIANT, convs[-1], last, last["value"], 0.0)
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


def _one_per_trial(study: StudyData, rows: pd.DataFrame) -> pd.DataFrame:
    """Curve rows of runs that are distinct trials (vanilla trials crossed with pretraining
    keys repeat)."""
    keep = unique_trials(study.runs[study.runs["run_id"].isin(rows["run_id"])])["run_id"]
    return rows[rows["run_id"].isin(keep)]


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


@ANALYSES.register()
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
        for check_id in (G_FALLS, TRUNK_ERASES, ACC_FALLS):
            section.checks.append(missing(study, check_id, "", "no curves"))
        return section
    long = long.assign(condition=condition_labels(long, by))
    for key in keys:
        name = key.replace("/", "_")
        curve = long[long["key"] == key].rename(columns={"step": "finetuning step", "value": key})
        section.figures[f"{name}.png"] = study_plots.curves_with_bands(
            curve, "finetuning step", key, "condition", "over finetuning"
        )
    section.headline = f"{g.replace('/', '_')}.png"
    # Changes from finetuning step 0 (before any finetuning) to the end: signed, unlike the
    # peak - final drops, which cannot be negative.
    frame = runs.copy()
    for key in (g, metrics.FORGETTING_PRETRAIN_ACC):
        frame[_change(key)] = frame["run_id"].map(_final_minus_start(long, key))
    fall = f"fall of G({layer})"
    frame[fall] = -frame[_change(g)]
    drop = metrics.drop_key(metrics.ACC_UNTRAINED)
    section.tables.append(
        (
            "Change over finetuning (final - step 0), peak - final of acc@untrained, final "
            "accuracy",
            condition_table(
                frame,
                by,
                [
                    _change(g),
                    _change(metrics.FORGETTING_PRETRAIN_ACC),
                    drop,
                    metrics.ACC_UNTRAINED,
                    metrics.ACC_TRAINED,
                ],
            ),
        )
    )
    lr = next((k for k in ("finetune.lr", "optim.lr") if k in runs and runs[k].nunique() > 1), None)
    rates = sorted(runs[lr].unique(), reverse=True) if lr else [None]

    def rows(freeze: str, rate: object = rates[0]) -> pd.DataFrame:
        out = frame[frame["finetune.freeze"] == freeze] if "finetune.freeze" in frame else frame
        return out if lr is None else out[out[lr] == rate]

    def at(rate: object) -> str:
        return "" if lr is None else f"{lr.split('.')[-1]}={rate:g}"

    for rate in rates:
        trainable, head = rows("none", rate), rows("all_but_head", rate)
        section.checks.append(
            against(study, G_FALLS, at(rate), trainable, trainable[_change(g)], 0.0, stats.PAIRED)
        )
        if head.empty:
            for check_id in (TRUNK_ERASES, ACC_FALLS):
                section.checks.append(missing(study, check_id, at(rate), "no head-only runs"))
            continue
        section.checks.append(
            difference(study, TRUNK_ERASES, at(rate), head, trainable, metrics.ACC_UNTRAINED)
        )
        section.checks.append(difference(study, ACC_FALLS, at(rate), trainable, head, drop))
    trainable = rows("none")
    change = trainable[_change(metrics.FORGETTING_PRETRAIN_ACC)]
    section.checks.append(
        against(study, PRETRAIN_FORGOTTEN, at(rates[0]), trainable, change, 0.0, stats.PAIRED)
    )
    if lr is not None:
        label = f"{lr}={rates[0]:g} vs {rates[-1]:g}"
        section.checks.append(
            difference(study, LOWER_LR, label, trainable, rows("none", rates[-1]), fall)
        )
    if "finetune.freeze" in frame:
        conv = rows("conv")
        # Head-only runs keep G by construction: they never enter this comparison.
        for other in ("none", "fc"):
            if not conv.empty and not rows(other).empty:
                label = f"conv vs {other}, {at(rates[0])}".rstrip(", ")
                section.checks.append(
                    difference(study, CONV_LARGEST, label, conv, rows(other), fall)
                )
        head = rows("all_but_head")
        if not head.empty:
            section.checks.append(
                against(study, HEAD_KEEPS, at(rates[0]), head, head[fall], 0.0, stats.PAIRED)
            )
            section.checks.append(
                difference(
                    study, HEAD_UNDERFITS, at(rates[0]), trainable, head, metrics.ACC_TRAINED
                )
            )
    return section


def _change(key: str) -> str:
    return f"{key} final - step 0"


def _final_minus_start(long: pd.DataFrame, key: str) -> pd.Series:
    """Per run: the curve's last value minus its value at finetuning step 0."""
    curve = long[long["key"] == key].sort_values("step")
    by_run = curve.groupby("run_id")
    start = curve[curve["step"] == 0].set_index("run_id")["value"]
    return by_run["value"].last() - start
