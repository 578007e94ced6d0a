"""Claims read off the representations: per-layer G of new items before finetuning (4), and
its fall, with the pretraining task's, over finetuning (5)."""

from __future__ import annotations

import math

import pandas as pd

from transinv import metrics, study_plots
from transinv.analyses.base import (
    MARGIN,
    NO_DATA,
    Check,
    Section,
    StudyData,
    at_step,
    compare,
    condition_labels,
    condition_table,
    level,
    register,
    representation_layer,
)

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
    layer_of = metrics.layers_of(runs.columns)
    layers = list(layer_of.values())
    start = at_step(study.curves(list(layer_of)))
    if start.empty:
        section.checks.append(Check("G per layer before finetuning", "no curves", NO_DATA))
        return section
    by = study.conditions
    start = start.assign(layer=start["key"].map(layer_of), condition=condition_labels(start, by))
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
    long = long.assign(condition=condition_labels(long, by))
    for key in keys:
        name = key.replace("/", "_")
        curve = long[long["key"] == key].rename(columns={"step": "finetuning step", "value": key})
        section.figures[f"{name}.png"] = study_plots.curves_with_bands(
            curve, "finetuning step", key, "condition", "over finetuning"
        )
    section.headline = f"{g.replace('/', '_')}.png"
    drops = [metrics.drop_key(k) for k in keys[:3]]
    section.tables.append(
        (
            "Forgetting (peak - final) and final accuracy",
            condition_table(study.runs, by, [*drops, metrics.ACC_TRAINED, g]),
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
