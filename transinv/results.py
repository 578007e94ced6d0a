"""Studies as pandas tables, read from the MLflow server: MLflow is the system of record, pandas
the query language.

    runs = load_runs("smoke", "http://127.0.0.1:5000")      # one row per trial
    long = curves(runs, ["finetune/acc_untrained"])         # run_id, key, step, value
    best_regimes(runs, "finetune/acc_untrained", by=["pretrain.dataset"])
    summarize(runs, ["pretrain.dataset"], ["finetune/acc_untrained"])  # mean, std, n
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
from collections.abc import Iterable, Sequence

import pandas as pd

from transinv.config import KEY_TYPES, ConfigError, parse_value
from transinv.constraints import OPS, Constraint
from transinv.tracking import ROLE_TRIAL, TAG_TRIAL, Tracker, all_of, check_uri, role_filter

RUN_COLUMNS = ["run_id", "trial_id", "status", "start_time", "end_time"]


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
        row.update(run.data.metrics)
        rows.append(row)
    frame = pd.DataFrame(rows, columns=RUN_COLUMNS if not rows else None)
    for key in KEY_TYPES:
        if key in frame:
            frame[key] = _typed(frame[key], key)
    frame.attrs["study"], frame.attrs["uri"] = study, tracker.uri
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
    by: Sequence[str],
    mode: str = "max",
    where: Sequence[Constraint | tuple[str, str, float]] = (),
    status: str | None = "FINISHED",
) -> pd.DataFrame:
    """Conditions ranked by the mean of `metric` over their trials (seeds), with the spread.

    where: constraints (`Constraint.parse("finetune/acc_trained >= 0.9")`, or the same as a
    tuple), met by a condition when the mean over its trials meets them (what Optuna is told of
    a repeated suggestion); dropping the seeds that miss would flatter a regime that works for
    some seeds only. Columns: the `by` keys, mean, std, min, max, n (trials), seeds, and the
    mean of each constraint metric.
    """
    if mode not in ("max", "min"):
        raise ConfigError(f"mode {mode!r} must be max or min")
    bad = [c for c in where if c[1] not in OPS]
    if bad:
        raise ConfigError(f"constraints {bad} have an operator other than {', '.join(OPS)}")
    where = [Constraint(*c) for c in where]
    frame = _rows(runs, status, [metric, *by, *(c.metric for c in where)])
    frame = frame[frame[metric].notna()]
    constrained = [f"{c.metric} mean" for c in where]
    if frame.empty:
        return pd.DataFrame(columns=[*by, "mean", "std", "min", "max", "n", "seeds", *constrained])
    groups = frame.groupby(list(by), dropna=False)
    table = (
        groups[metric].agg(["mean", "std", "min", "max", "count"]).rename(columns={"count": "n"})
    )
    if "seed" in frame.columns:
        table["seeds"] = groups["seed"].agg(lambda s: ",".join(map(str, sorted(s))))
    for constraint, column in zip(where, constrained, strict=True):
        table[column] = groups[constraint.metric].mean()
        table = table[constraint.test(table[column])]
    table = table.sort_values("mean", ascending=(mode == "min")).reset_index()
    table.attrs["metric"], table.attrs["mode"] = metric, mode
    return table


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
