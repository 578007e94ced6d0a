"""Where a whole study's time went, from what its runs record in MLflow.

    study_cost("claim5_forgetting", "http://127.0.0.1:5000")   # one row per part
    python -m study profile claim5_forgetting                   # the same, printed

Each trial logs its seconds by part at its end (`time/<part>_s`, see `metrics.TIME_PARTS`); a
study's cost adds them up and sets them against its slot time: the study's wall time (its parent
run's start to end) times the most trials that ran at once. Slot time a trial run does not cover
is the orchestration's: Ray start-up, worker processes starting and importing torch, scheduling
and idle slots. Trial time not booked to a part is the trial's own overhead outside the trainer
(opening its run, restoring a checkpoint). Tracking runs on a background thread alongside
training, so its busy time is shown but not part of the sum; what the trial waited for it at the
end is. Cache hits saved: the stored pretrainings' original durations, which the hits did not
spend. Figures cover the attempt that finished a trial (a retried trial's earlier attempts are in
the Ray overhead). Reading runs lives in `results.py`.
"""

from __future__ import annotations

import itertools

import pandas as pd

from transinv import metrics
from transinv.config import ConfigError
from transinv.results import load_runs, study_info

PARTS = {
    "setup": "data and net built",
    "pretrain": "pretraining steps",
    "finetune": "finetuning steps",
    "eval": "evaluations",
    "report": "on_eval callback: checkpoint and Tune report",
    "tracking_wait": "waiting for MLflow at the trial's end",
}


def _running(starts: pd.Series, ends: pd.Series) -> list[tuple[pd.Timestamp, int]]:
    """Each start or end of the [start, end) intervals, in time order, with how many are open
    just after it; ends sort before starts at the same time."""
    events = sorted([(t, 1) for t in starts] + [(t, -1) for t in ends])
    counts, running = [], 0
    for t, change in events:
        running += change
        counts.append((t, running))
    return counts


def most_at_once(starts: pd.Series, ends: pd.Series) -> int:
    """The largest number of [start, end) intervals that overlap."""
    return max((n for _, n in _running(starts, ends)), default=0)


def running_seconds(starts: pd.Series, ends: pd.Series) -> float:
    """Seconds in which at least one of the intervals is open: the union's length. A study's
    wall time, where first start to last end would also count the day between a killed run and
    its resume."""
    counts = _running(starts, ends)
    return sum(
        (t1 - t0).total_seconds() for (t0, n), (t1, _) in itertools.pairwise(counts) if n > 0
    )


def study_cost(study: str, uri: str | None = None) -> pd.DataFrame:
    """One row per part of the study's time: `part`, `seconds`, `share` (of slot time; NaN for
    the lines outside the sum), `what`. The frame's attrs hold `wall_s`, `slots`, `trials`,
    `cache_hits`. Only finished trial runs count."""
    runs = load_runs(study, uri)
    runs = runs[runs["status"] == "FINISHED"] if len(runs) else runs
    if runs.empty:
        raise ConfigError(f"study {study!r} has no finished trial runs")
    info = study_info(study, uri)
    start = min(info["start_time"], runs["start_time"].min())
    end = info["end_time"] if pd.notna(info["end_time"]) else runs["end_time"].max()
    wall = (max(end, runs["end_time"].max()) - start).total_seconds()
    slots = most_at_once(runs["start_time"], runs["end_time"])
    slot_s = wall * slots
    run_s = float((runs["end_time"] - runs["start_time"]).dt.total_seconds().sum())

    def total(part: str) -> float:
        key = metrics.time_key(part)
        return float(runs[key].fillna(0.0).sum()) if key in runs else 0.0

    rows = [(part, total(part), what) for part, what in PARTS.items()]
    booked = sum(seconds for _, seconds, _ in rows)
    rows.append(("trial_other", run_s - booked, "in trial runs, outside the trainer's parts"))
    rows.append(("ray_overhead", slot_s - run_s, "slot time outside trial runs"))
    table = pd.DataFrame(rows, columns=["part", "seconds", "what"])
    table["share"] = table["seconds"] / slot_s
    hits = (
        int((runs[metrics.TIME_PRETRAIN_SAVED].notna()).sum())
        if (metrics.TIME_PRETRAIN_SAVED in runs)
        else 0
    )
    outside = pd.DataFrame(
        [
            ("tracking", total("tracking"), float("nan"), "MLflow calls, alongside training"),
            ("cache_saved", total("pretrain_saved"), float("nan"), f"{hits} cache hits"),
        ],
        columns=["part", "seconds", "share", "what"],
    )
    table = pd.concat([table, outside], ignore_index=True)[["part", "seconds", "share", "what"]]
    table.attrs.update(wall_s=wall, slots=slots, trials=len(runs), cache_hits=hits, study=study)
    return table


def format_cost(table: pd.DataFrame) -> str:
    """The cost table as text, with a header line."""
    a = table.attrs
    lines = [
        f"study {a['study']}: {a['trials']} finished trials, wall {a['wall_s']:.0f} s, "
        f"{a['slots']} at most at once: {a['wall_s'] * a['slots']:.0f} slot-seconds"
    ]
    for row in table.itertuples():
        share = "" if pd.isna(row.share) else f"{100 * row.share:5.1f}%"
        lines.append(f"  {row.part:14s} {row.seconds:9.1f} s {share:>6s}  {row.what}")
    return "\n".join(lines)
