"""What the Optuna searches found: the best regime under constraints (`regime_search`), and
for several objectives at once the Pareto front with the keys that move each objective
(`tradeoffs`). Both measure, with no expected direction: a search has no claim to test."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

import transinv.analyses.expectations as ex
from transinv import metrics, plots, stats, study_plots
from transinv.analyses.base import ANALYSES, Section, StudyData, chance_of, judge, missing
from transinv.config import ConfigError
from transinv.constraints import Constraint, from_json
from transinv.results import best_regimes, importance, pareto, study_objectives, summarize

LEARNED_WHERE_TRAINED = 0.95
"""acc@trained a regime must keep for `tradeoffs` to call its transfer learned invariance."""
NEAR_COMPLETE_RATIO = 0.9

BEST_REGIME = ex.declare(
    "regime_search.best",
    ex.HYPOTHESIS,
    "the best regime (highest mean acc@untrained with the constraints met)",
    "mean acc@untrained of the best regime",
    ex.NONE,
    0.0,
)


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
    estimate = _measured(best)
    spread = f"{estimate.effect:.2f} ± {estimate.extra['std']:.2f}"
    seeds = best.get("seeds", "?")
    measured = f"{_regime(best, by)}: {spread} over seeds {seeds} (n={estimate.n[0]})"
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


MOST_TRANSFER = ex.declare(
    "tradeoffs.most_transfer",
    ex.HYPOTHESIS,
    f"the regime with the highest transfer ratio among those keeping acc@trained >= "
    f"{LEARNED_WHERE_TRAINED} (condition means); near-complete learned invariance would be a "
    f"ratio >= {NEAR_COMPLETE_RATIO}",
    "mean transfer ratio of that regime",
    ex.NONE,
    0.0,
)


@ANALYSES.register()
def tradeoffs(study: StudyData) -> Section:
    section = Section(
        "tradeoffs",
        "Trade-offs: transfer, accuracy where learned, forgetting",
        "Which regimes give the most transfer with the least forgetting without giving up "
        "accuracy where the items were learned (the Pareto front of the study's objectives), "
        "and which keys move each objective?",
    )
    runs = study.runs
    try:
        objectives = study_objectives(study.info)
    except ConfigError as err:
        section.checks.append(missing(study, MOST_TRANSFER, "", str(err)))
        return section
    by = study.conditions or ["trial_id"]
    everything = pareto(runs, objectives, by=by, dominated=True)
    front = everything[everything["pareto"]]
    section.tables.append(
        (
            f"Pareto front of {len(objectives)} objectives: {len(front)} of {len(everything)} "
            "conditions (mean ± std over seeds)",
            _front_table(front, by, objectives, runs),
        )
    )
    label = "pretrain.dataset" if "pretrain.dataset" in by else None
    first = objectives[0]
    for other in objectives[1:]:
        pair = pareto(runs, [first, other], by=by, dominated=True)
        name = f"pareto_{_short(first[0])}_vs_{_short(other[0])}.png"
        section.figures[name] = study_plots.pareto_scatter(
            pair, first[0], other[0], label, "the front of these two objectives highlighted"
        )
        section.headline = section.headline or name
    _importances(section, runs, by, objectives)
    _most_transfer(study, section, by)
    return section


def _front_table(
    front: pd.DataFrame, by: Sequence[str], objectives: Sequence[tuple[str, str]], runs
) -> pd.DataFrame:
    table = front[list(by)].copy()
    for metric, mode in objectives:
        mean, std = front[f"{metric} mean"], front[f"{metric} std"].fillna(0.0)
        table[f"{metric} ({mode})"] = [f"{m:.2f} ± {s:.2f}" for m, s in zip(mean, std, strict=True)]
    if metrics.TRANSFER_RATIO in runs:
        column = f"{metrics.TRANSFER_RATIO} mean"
        means = summarize(runs, by, [metrics.TRANSFER_RATIO])[[*by, column]]
        table["transfer ratio"] = front[list(by)].merge(means, how="left")[column].to_numpy()
    table["n"] = front["n"].to_numpy()
    return table.reset_index(drop=True)


def _short(metric: str) -> str:
    return metric.rsplit("/", 1)[-1]


def _importances(
    section: Section, runs: pd.DataFrame, by: Sequence[str], objectives: Sequence[tuple[str, str]]
) -> None:
    """PED-ANOVA and fANOVA per objective, `seed` as the null reference: one table, a figure
    per objective."""
    merged = None
    for metric, mode in objectives:
        try:
            table = importance(runs, metric, params=list(by), mode=mode)
        except (ConfigError, ValueError, RuntimeError) as err:  # too few trials for an evaluator
            section.notes.append(f"No importance for {metric}: {err}")
            continue
        name = f"importance_{_short(metric)}.png"
        section.figures[name] = study_plots.importance_bars(table)
        renamed = table.rename(
            columns={
                "ped_anova": f"{_short(metric)} PED-ANOVA",
                "fanova": f"{_short(metric)} fANOVA",
            }
        )
        merged = renamed if merged is None else merged.merge(renamed, on="param", how="outer")
    if merged is not None:
        section.tables.append(
            ("Parameter importance per objective (each column sums to 1; `seed` is noise)", merged)
        )


def _most_transfer(study: StudyData, section: Section, by: Sequence[str]) -> None:
    runs = study.runs
    if metrics.TRANSFER_RATIO not in runs or metrics.ACC_TRAINED not in runs:
        section.checks.append(missing(study, MOST_TRANSFER, "", "no transfer ratio logged"))
        return
    kept = best_regimes(
        runs,
        metrics.TRANSFER_RATIO,
        by=by,
        where=[(metrics.ACC_TRAINED, ">=", LEARNED_WHERE_TRAINED)],
    )
    overall = best_regimes(runs, metrics.TRANSFER_RATIO, by=by)
    if kept.empty:
        why = f"no regime keeps acc@trained >= {LEARNED_WHERE_TRAINED}"
        section.checks.append(missing(study, MOST_TRANSFER, "", why))
        return
    best = kept.iloc[0]
    estimate = _measured(best)
    reaches = "reaches" if best["mean"] >= NEAR_COMPLETE_RATIO else "below"
    top = overall.iloc[0]
    spread = f"{estimate.effect:.2f} ± {estimate.extra['std']:.2f} (n={estimate.n[0]})"
    measured = (
        f"{_regime(best, by)}: {spread}, acc@trained "
        f"{best[f'{metrics.ACC_TRAINED} mean']:.2f}; {reaches} {NEAR_COMPLETE_RATIO}. Highest "
        f"ratio at any acc@trained: {top['mean']:.2f} ({_regime(top, by)})"
    )
    section.checks.append(judge(study, MOST_TRANSFER, "", estimate, [], measured))


def _regime(row: pd.Series, by: Sequence[str]) -> str:
    return ", ".join(f"{k}={plots._tick(row[k])}" for k in by)


def _measured(best: pd.Series) -> stats.Estimate:
    """A search's best condition (a `best_regimes` row) as a measurement: its mean over seeds
    with their spread, no interval (the best of many is no unbiased estimate)."""
    std = 0.0 if math.isnan(best["std"]) else float(best["std"])
    return stats.Estimate(
        float(best["mean"]), math.nan, math.nan, math.nan, (int(best["n"]),), "mean over seeds",
        {"mean": float(best["mean"]), "std": std},
    )  # fmt: skip
