"""Studies as pandas tables, read from the MLflow server: MLflow is the system of record, pandas
the query language.

    runs = load_runs("smoke", "http://127.0.0.1:5000")      # one row per trial
    long = curves(runs, ["finetune/acc_untrained"])         # run_id, key, step, value
    best_regimes(runs, "finetune/acc_untrained", by=["pretrain.dataset"])
    best_so_far(runs, "finetune/acc_untrained")             # a search's best feasible by trial
    summarize(runs, ["pretrain.dataset"], ["finetune/acc_untrained"])  # mean, std, n
    pareto(runs, [("finetune/acc_untrained", "max"), ("forgetting/pretrain_acc_drop", "min")])
    importance(runs, "finetune/acc_untrained")              # PED-ANOVA and fANOVA per key
    study_info("smoke")                                     # the study's parent run
    final_grids(runs)                                       # run_id, x, y, acc, G/<layer>

Columns are the dotted config keys (typed as in `config.py`), the final metrics under their
metric keys, and `run_id`, `trial_id`, `status`, `start_time`, `end_time`. MLflow is reached
through `tracking.Tracker` only, with its filter builders.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from transinv.config import KEY_TYPES, ConfigError, format_value, parse_value
from transinv.constraints import OPS, Constraint, from_json
from transinv.tracking import (
    ROLE_TRIAL,
    TAG_PARAMS,
    TAG_TRIAL,
    Tracker,
    all_of,
    check_uri,
    role_filter,
    summary_values,
)

SAMPLED = "sampled_keys"
"""Column of the keys the searcher chose for a trial, comma-separated (its other keys are fixed,
defaults, or inactive under the study's `when` / `when_not`)."""
RUN_COLUMNS = ["run_id", "trial_id", "status", "start_time", "end_time", SAMPLED]


def tracking_uri(uri: str | None = None) -> str:
    """The given URI, else $MLFLOW_TRACKING_URI."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise ConfigError(
            "no tracking URI: pass one or set MLFLOW_TRACKING_URI "
            "(`python -m study ui` serves the local studies and prints it)"
        )
    return check_uri(uri)


def _typed(column: pd.Series, key: str) -> pd.Series:
    """A param column cast to its config type (MLflow stores params as strings)."""
    kind = KEY_TYPES[key]
    values = [None if v is None or v != v else parse_value(key, v) for v in column]
    if kind in (int, float, bool) and all(v is not None for v in values):
        return pd.Series(
            values, index=column.index, dtype={int: "int64", float: "float64", bool: "bool"}[kind]
        )
    if kind is str:
        return pd.Series(values, index=column.index, dtype="str")
    return pd.Series(values, index=column.index, dtype="object")


def study_info(study: str, uri: str | None = None) -> pd.Series:
    """The study's parent run as one row: `run_id`, `status`, `start_time`, `end_time`, its
    params (space file, sampler, objective, constraints, report, ...) and `tags.<name>`."""
    tracker = Tracker(tracking_uri(uri))
    experiment = tracker.find_experiment(study)
    run = tracker.parent_run(experiment, study) if experiment else None
    if run is None:
        raise ConfigError(f"no study {study!r} on {tracker.uri}")
    row = {
        "run_id": run.info.run_id,
        "experiment_id": run.info.experiment_id,
        "status": run.info.status,
        "start_time": pd.to_datetime(run.info.start_time, unit="ms", utc=True),
        "end_time": pd.to_datetime(run.info.end_time, unit="ms", utc=True)
        if run.info.end_time
        else pd.NaT,
        **run.data.params,
        **{f"tags.{k}": v for k, v in run.data.tags.items()},
    }
    return pd.Series(row, name=study, dtype="object")


def load_runs(study: str, uri: str | None = None, filter_string: str = "") -> pd.DataFrame:
    """One row per trial run of a study (columns: see the module docstring)."""
    tracker = Tracker(tracking_uri(uri))
    experiment = tracker.find_experiment(study)
    if experiment is None:
        raise ConfigError(f"no study {study!r} on {tracker.uri}")
    rows = []
    for run in tracker.find_runs(experiment, all_of(role_filter(ROLE_TRIAL), filter_string)):
        row = {
            "run_id": run.info.run_id,
            "trial_id": run.data.tags.get(TAG_TRIAL),
            "status": run.info.status,
            "start_time": pd.to_datetime(run.info.start_time, unit="ms", utc=True),
            "end_time": pd.to_datetime(run.info.end_time, unit="ms", utc=True)
            if run.info.end_time
            else pd.NaT,
        }
        row.update({k: v for k, v in run.data.params.items() if k in KEY_TYPES})
        row[SAMPLED] = run.data.tags.get(TAG_PARAMS)
        row.update(summary_values(run.data.tags))
        row.update(run.data.metrics)
        rows.append(row)
    frame = pd.DataFrame(rows, columns=RUN_COLUMNS if not rows else None)
    for key in KEY_TYPES:
        if key in frame:
            frame[key] = _typed(frame[key], key)
    frame.attrs["study"], frame.attrs["uri"] = study, tracker.uri
    parent = tracker.parent_run(experiment, study)
    # The study's constraints as its parent run keeps them (JSON): `best_regimes` applies them.
    frame.attrs["constraints"] = from_json(
        parent.data.params.get("constraints") if parent else None
    )
    return frame.sort_values("start_time", ignore_index=True) if rows else frame


def curves(runs: pd.DataFrame, keys: Iterable[str], uri: str | None = None) -> pd.DataFrame:
    """Step-indexed metric histories of the given runs as a long table (run_id, key, step,
    value, timestamp). A trial restored from a lagging checkpoint logs some steps twice: the
    latest timestamp wins, so each (run, key, step) appears once."""
    tracker = Tracker(tracking_uri(uri or runs.attrs.get("uri")))
    rows = [
        (run_id, key, m.step, m.value, m.timestamp)
        for run_id in runs["run_id"]
        for key in keys
        for m in tracker.metric_history(run_id, key)
    ]
    frame = pd.DataFrame(rows, columns=["run_id", "key", "step", "value", "timestamp"])
    frame = frame.sort_values(["run_id", "key", "step", "timestamp"])
    frame = frame.drop_duplicates(["run_id", "key", "step"], keep="last")
    return frame.reset_index(drop=True)


def final_grids(
    runs: pd.DataFrame, uri: str | None = None, artifact: str = "final_grid.json"
) -> pd.DataFrame:
    """The last evaluation's grid of each run as a long table: run_id, x, y (pixel centres),
    acc, and G/<layer> per layer. Runs without the artifact (unfinished) are left out."""
    tracker = Tracker(tracking_uri(uri or runs.attrs.get("uri")))
    frames = []
    with tempfile.TemporaryDirectory() as tmp:
        for run_id in runs["run_id"]:
            path = tracker.download(run_id, artifact, tmp)
            if path is None:  # absent: the trial did not finish
                continue
            table = json.loads(path.read_text())
            frame = pd.DataFrame(table["data"], columns=table["columns"])
            frame.insert(0, "run_id", run_id)
            frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=["run_id", "x", "y", "acc"])
    return pd.concat(frames, ignore_index=True)


def with_config(long: pd.DataFrame, runs: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """A long curve table joined with config columns of its runs (for grouping and plotting)."""
    return long.merge(runs[["run_id", *keys]], on="run_id", how="left")


def best_regimes(
    runs: pd.DataFrame,
    metric: str,
    by: Sequence[str] = (),
    mode: str = "max",
    where: Sequence[Constraint | tuple[str, str, float]] = (),
    status: str | None = "FINISHED",
) -> pd.DataFrame:
    """Conditions ranked by the mean of `metric` over their trials (seeds), with the spread.

    A condition is the values of every key the study varies (`condition_keys`): conditions are
    never pooled; `by` only puts its keys first. A key inactive in a trial (say
    `pretrain.translation` where the study's `when` sampled it only with a pretraining set) is
    blank there, not its unused default.

    Constraints are the study's own (`runs.attrs["constraints"]`, from `load_runs`) plus
    `where` (`Constraint.parse("finetune/acc_trained >= 0.9")`, or the same as a tuple), met by
    a condition when the mean over its trials meets them (what Optuna is told of a repeated
    suggestion); dropping the seeds that miss would flatter a regime that works for some seeds
    only. Columns: the condition keys, mean, std, min, max, n (trials), seeds (the distinct
    seeds among them), and the mean of each constraint metric.
    """
    if mode not in ("max", "min"):
        raise ConfigError(f"mode {mode!r} must be max or min")
    where = _constraints(runs, where)
    keys = list(dict.fromkeys([*by, *condition_keys(runs)])) or ["trial_id"]
    frame = _rows(runs, status, [metric, *keys, *(c.metric for c in where)])
    frame = active_only(frame[frame[metric].notna()], keys)
    constrained = [f"{c.metric} mean" for c in where]
    if frame.empty:
        return pd.DataFrame(
            columns=[*keys, "mean", "std", "min", "max", "n", "seeds", *constrained]
        )
    groups = frame.groupby(keys, dropna=False)
    table = (
        groups[metric].agg(["mean", "std", "min", "max", "count"]).rename(columns={"count": "n"})
    )
    if "seed" in frame.columns:
        table["seeds"] = groups["seed"].agg(lambda s: ",".join(map(str, sorted(set(s)))))
    for constraint, column in zip(where, constrained, strict=True):
        table[column] = groups[constraint.metric].mean()
        table = table[constraint.test(table[column])]
    table = table.sort_values("mean", ascending=(mode == "min")).reset_index()
    table.attrs["metric"], table.attrs["mode"] = metric, mode
    return table


def _constraints(
    runs: pd.DataFrame, where: Sequence[Constraint | tuple[str, str, float]]
) -> list[Constraint]:
    """The study's own constraints (`runs.attrs["constraints"]`, from `load_runs`) plus `where`,
    each once; ConfigError for an operator outside `OPS`."""
    given = [*runs.attrs.get("constraints", ()), *where]
    bad = [c for c in given if c[1] not in OPS]
    if bad:
        raise ConfigError(f"constraints {bad} have an operator other than {', '.join(OPS)}")
    return list(dict.fromkeys(Constraint(*c) for c in given))


def best_so_far(
    runs: pd.DataFrame,
    metric: str,
    mode: str = "max",
    where: Sequence[Constraint | tuple[str, str, float]] = (),
) -> pd.DataFrame:
    """How a search progressed: its trials in launch order (`trial` 1, 2, ...), each
    trial's `value` of `metric`, whether it met the study's constraints plus `where`
    (`feasible`, per trial: a search is judged on what each trial it ran found) and `best`, the
    best feasible value among trials 1..n (NaN until one is feasible). Trials that failed or
    were stopped still count in the launch order: the search paid for them."""
    if mode not in ("max", "min"):
        raise ConfigError(f"mode {mode!r} must be max or min")
    where = _constraints(runs, where)
    frame = _rows(runs, None, [metric, "start_time", *(c.metric for c in where)])
    frame = frame.sort_values("start_time", kind="stable", ignore_index=True)
    feasible = frame["status"].eq("FINISHED") & frame[metric].notna()
    for constraint in where:
        feasible &= constraint.test(frame[constraint.metric]).fillna(False).astype(bool)
    found = frame[metric].where(feasible)
    # cummax leaves NaN where a trial was infeasible; the best so far carries over it.
    best = (found.cummax() if mode == "max" else found.cummin()).ffill()
    return pd.DataFrame(
        {
            "trial": np.arange(1, len(frame) + 1),
            "run_id": frame.get("run_id"),
            "value": frame[metric],
            "feasible": feasible,
            "best": best,
        }
    )


def condition_keys(runs: pd.DataFrame) -> list[str]:
    """The keys a study varies, seeds aside, in the order its searcher chose them: from the
    trials' `sampled_keys` (runs from `load_runs`), else the config keys that differ."""
    if SAMPLED in runs and runs[SAMPLED].notna().any():
        # Each tag lists its trial's active keys in file order: the longest first keeps it.
        listed = sorted((text.split(",") for text in runs[SAMPLED].dropna()), key=len)
        sampled = dict.fromkeys(k for keys in reversed(listed) for k in keys if k)
        return [k for k in sampled if k != "seed" and k in runs]
    return varying_keys(runs)


def active_only(runs: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """`runs` with each of `keys` blanked (None/NaN) in the trials where the searcher did not
    choose it: inactive there under the study's conditions. Unchanged without `sampled_keys`."""
    if SAMPLED not in runs or runs[SAMPLED].isna().all():
        return runs
    sampled = runs[SAMPLED].fillna("").str.split(",")
    searched = {k for listed in sampled for k in listed}
    out = runs.copy()
    for key in keys:
        if key in searched:
            inactive = ~sampled.apply(lambda listed, key=key: key in listed)
            out[key] = out[key].astype(object).where(~inactive, None)
    return out


def summarize(
    runs: pd.DataFrame,
    by: Sequence[str],
    metrics: Sequence[str],
    status: str | None = "FINISHED",
) -> pd.DataFrame:
    """One row per condition (the `by` keys; one row in all when empty): `n` trials, then
    `<metric> mean` and `<metric> std` (over seeds) for each metric, in condition order."""
    frame = _rows(runs, status, [*by, *metrics])
    keys = list(by) or (lambda _: 0)
    grouped = frame.groupby(keys, dropna=False, sort=True)
    table = grouped.size().rename("n").to_frame()
    for metric in metrics:
        table[f"{metric} mean"] = grouped[metric].mean()
        table[f"{metric} std"] = grouped[metric].std()
    table = table.reset_index(drop=not by)
    return table


def _rows(runs: pd.DataFrame, status: str | None, columns: Sequence[str]) -> pd.DataFrame:
    """The runs of `status` (all when None); ConfigError naming any column they lack."""
    missing = [c for c in columns if c not in runs.columns]
    if missing:
        raise ConfigError(
            f"columns {missing} are not in the runs; available: {', '.join(runs.columns)}"
        )
    return runs if status is None else runs[runs["status"] == status]


def varying_keys(runs: pd.DataFrame) -> list[str]:
    """Config keys that vary across the runs, seeds aside: what defines a condition."""
    return [
        c
        for c in runs.columns
        if c in KEY_TYPES and c != "seed" and runs[c].astype(str).nunique() > 1
    ]


Objective = tuple[str, str]
"""(metric, mode), mode `max` or `min`: what a study optimizes."""


def study_objectives(info: pd.Series) -> list[Objective]:
    """The (metric, mode) pairs a study optimizes, from its parent run (`study_info`): the
    `objectives` param (JSON), else the older single `objective` param, `"max metric"`."""
    if isinstance(info.get("objectives"), str):
        return [(m, mode) for m, mode in json.loads(info["objectives"])]
    mode, _, metric = str(info.get("objective", "")).partition(" ")
    if mode not in ("max", "min") or not metric:
        raise ConfigError(f"study {info.name!r} names no objective on its parent run")
    return [(metric, mode)]


def _objectives(objectives: Sequence[Objective | Mapping[str, str]]) -> list[Objective]:
    out = []
    for o in objectives:
        metric, mode = (o["metric"], o["mode"]) if isinstance(o, Mapping) else o
        if mode not in ("max", "min"):
            raise ConfigError(f"objective {metric!r} has mode {mode!r}; choose max or min")
        out.append((metric, mode))
    if not out:
        raise ConfigError("pareto needs at least one objective (metric, mode)")
    return out


def pareto(
    runs: pd.DataFrame,
    objectives: Sequence[Objective | Mapping[str, str]],
    by: Sequence[str] | None = None,
    where: Sequence[Constraint | tuple[str, str, float]] = (),
    status: str | None = "FINISHED",
    dominated: bool = False,
) -> pd.DataFrame:
    """The conditions no other condition beats on every objective at once, from their means
    over trials (seeds), with the spread.

    objectives: (metric, mode) pairs, e.g. `[("finetune/acc_untrained", "max"),
    ("forgetting/pretrain_acc_drop", "min")]` (or `{metric, mode}` mappings, as in a study
    file). by: the config keys that define a condition (default: `varying_keys(runs)`). where:
    constraints met by a condition's means, as in `best_regimes`. A trial missing any objective
    is left out. A condition is dominated when another is at least as good on every objective
    and better on one; conditions with equal means do not dominate each other.
    Columns: the `by` keys, `n` (trials), `<metric> mean` and `<metric> std` per objective,
    the mean of each constraint metric; ordered best first on the first objective. With
    `dominated=True` every condition is kept, with a bool `pareto` column.
    """
    objectives = _objectives(objectives)
    by = list(varying_keys(runs) if by is None else by)
    where = [Constraint(*c) for c in where]
    bad = [c for c in where if c.op not in OPS]
    if bad:
        raise ConfigError(f"constraints {bad} have an operator other than {', '.join(OPS)}")
    metrics = [m for m, _ in objectives]
    frame = _rows(runs, status, [*by, *metrics, *(c.metric for c in where)])
    frame = frame.dropna(subset=metrics)
    grouped = frame.groupby(by or (lambda _: 0), dropna=False, sort=True)
    table = grouped.size().rename("n").to_frame()
    for metric in metrics:
        table[f"{metric} mean"] = grouped[metric].mean()
        table[f"{metric} std"] = grouped[metric].std()
    for c in where:
        table[f"{c.metric} mean"] = grouped[c.metric].mean()
        table = table[c.test(table[f"{c.metric} mean"])]
    table = table.reset_index(drop=not by)
    # Maximise everything: a min objective enters negated.
    signs = [1.0 if mode == "max" else -1.0 for _, mode in objectives]
    scores = table[[f"{m} mean" for m in metrics]].to_numpy(float).reshape(-1, len(metrics))
    table["pareto"] = pareto_mask(scores * signs)
    if not dominated:
        table = table[table["pareto"]].drop(columns="pareto")
    first, mode = objectives[0]
    table = table.sort_values(f"{first} mean", ascending=mode == "min", ignore_index=True)
    table.attrs["objectives"] = objectives
    return table


def pareto_mask(scores: np.ndarray) -> np.ndarray:
    """Which rows of `scores` [N, K] (higher is better in every column) no other row dominates:
    at least as good in every column and better in one."""
    scores = np.asarray(scores, dtype=float)
    keep = np.ones(len(scores), dtype=bool)
    for i, row in enumerate(scores):
        beats = np.all(scores >= row, axis=1) & np.any(scores > row, axis=1)
        keep[i] = not beats.any()
    return keep


def importance(
    runs: pd.DataFrame,
    metric: str,
    params: Sequence[str] | None = None,
    mode: str = "max",
    status: str | None = "FINISHED",
    seed: int = 0,
) -> pd.DataFrame:
    """How much each config key moves `metric`, by two of optuna.importance's evaluators, for
    any study (grids included): each run becomes an Optuna trial with its params and value.

    params: the config keys to weigh (default: `varying_keys(runs)`); `seed` is always added
    as a null reference, since it can only matter by chance: a key scoring no higher than it is
    indistinguishable from noise at this number of trials. Distributions are inferred from the
    columns: strings, booleans, points and `seed` are categorical, numbers float or int ranges
    (log scale for positive ranges over two decades and more).
    `ped_anova` (PED-ANOVA: which values the best 10% of trials share, for `mode`) and `fanova`
    (variance explained by a random forest over the whole space) answer different questions and
    often disagree; both are normalized to sum to 1. Rows: one per key, by fANOVA first.
    """
    import optuna
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    if mode not in ("max", "min"):
        raise ConfigError(f"mode {mode!r} must be max or min")
    params = list(varying_keys(runs) if params is None else params)
    params = [*params, *(["seed"] if "seed" not in params else [])]
    frame = _rows(runs, status, [metric, *params])
    frame = frame[frame[metric].notna()]
    if len(frame) < 2:
        raise ConfigError(f"importance of {metric!r} needs 2 or more finished trials with it")
    values: dict[str, list] = {}
    distributions = {}
    for key in params:
        column = frame[key]
        kind = KEY_TYPES.get(key)
        if key == "seed" or kind not in (int, float) or column.isna().any():
            column = column.map(lambda v: "-" if v is None or v != v else format_value(v))
            distributions[key] = CategoricalDistribution(sorted(set(column)))
            values[key] = list(column)
            continue
        low, high = column.min(), column.max()
        log = bool(low > 0 and high / low >= 100)
        if kind is int:
            distributions[key] = IntDistribution(int(low), int(high), log=log)
            values[key] = [int(v) for v in column]
        else:
            distributions[key] = FloatDistribution(float(low), float(high), log=log)
            values[key] = [float(v) for v in column]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    study.add_trials(
        [
            optuna.trial.create_trial(
                params={k: values[k][i] for k in params},
                distributions=distributions,
                value=float(v),
            )
            for i, v in enumerate(frame[metric])
        ]
    )
    evaluators = {
        "ped_anova": optuna.importance.PedAnovaImportanceEvaluator(),
        "fanova": optuna.importance.FanovaImportanceEvaluator(seed=seed),
    }
    table = pd.DataFrame({"param": params})
    for name, evaluator in evaluators.items():
        scores = optuna.importance.get_param_importances(study, evaluator=evaluator, params=params)
        table[name] = [float(scores.get(k, 0.0)) for k in params]
    table = table.sort_values(["fanova", "ped_anova"], ascending=False, ignore_index=True)
    table.attrs.update(metric=metric, mode=mode, trials=len(frame))
    return table
