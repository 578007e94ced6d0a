"""What `python -m study run` prints: the live progress of a study and its closing summary.

`Progress` is a driver-side `tune.Callback` that stands in for Ray's trial tables: a line per
finished, retried or errored trial, and every so often a status line (trials running, finished
and errored; each running trial's phase and step; the best objective so far among trials that
meet the study's constraints; an ETA from the steps still to run). `summary_lines` reads the
finished study back from MLflow, the system of record, and gives per condition the mean of the
objectives and of the constraint metrics, chance, and the best condition that meets the
constraints. Silencing Ray itself (its loggers, worker output and output engine) is
`ray_output`; the CLI's `--verbose` keeps Ray's own output instead. The Tuner (`tuner.py`)
attaches the callback.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ray import tune
from ray.tune.search.repeater import TRIAL_INDEX

from study.space import StudySpec, sampled_values, trial_config
from transinv import config as cfg
from transinv import metrics

PHASE, PRETRAIN_STEP, FINETUNE_STEP = "phase", "pretrain/step", "finetune/step"
"""What each `tune.report` of a trial carries about its position (`trial.py`)."""
RAY_LOGGERS = ("ray", "ray.tune", "ray.train", "ray.air")


def ray_output(verbose: bool) -> dict[str, Any]:
    """`ray.init` keywords for the console, and (unless `verbose`) Ray's own output off.

    Quiet (Ray 2.60): workers' output stays in their log files (checkpoint notices; a trial's
    error reaches the console through `Progress`, and its MLflow run); the driver's Ray loggers
    (start-up and auth notices, snapshot warnings, the `Tuner.restore(...)` hint after an
    interruption) show errors only; and Tune's legacy output engine, which `RunConfig(verbose=
    0)` silences entirely (the default engine still prints its configuration box and paths).
    """
    if verbose:
        return {"log_to_driver": True}
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    for name in RAY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    return {"log_to_driver": False, "logging_level": logging.ERROR}


def clock(seconds: float) -> str:
    """`m:ss`, or `h:mm:ss` from an hour."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def number(value: Any) -> str:
    """A metric as printed: three decimals, `-` when missing or NaN."""
    if value is None or math.isnan(float(value)):
        return "-"
    return f"{float(value):.3f}"


class Progress(tune.Callback):
    """Compact console progress of one study (driver side; Ray's tables stay off).

    Status lines come at most every `every_s` seconds, and further apart as the study grows
    old (a sixth of the time elapsed, up to 5 minutes), so a long study prints a few hundred
    lines at most."""

    def __init__(self, spec: StudySpec, expected: int, every_s: float = 10.0):
        self.spec, self.expected, self.every_s = spec, expected, every_s
        self._reset()

    def _reset(self) -> None:
        self.started = time.monotonic()
        self.last_line = self.started
        self.baseline: float | None = None  # steps done when this launch of the study began
        self.moving: float | None = None  # when this launch's first step was done
        self.moved_from = 0.0  # steps done at that moment
        self.totals: dict[str, int] = {}  # trial id -> steps it runs in all
        self.broken = False

    def setup(self, **info: Any) -> None:
        self._reset()

    # -- what one trial is and where it stands ------------------------------------------------

    def _config(self, trial) -> dict[str, Any]:
        return {k: v for k, v in sampled_values(trial.config).items() if k != TRIAL_INDEX}

    def label(self, trial) -> str:
        """The trial's short id and the values the study chose for it: `3f2a pretrain.dataset=
        glyphs seed=1`."""
        config = self._config(trial)
        chosen = [f"{k}={v}" for k, v in config.items() if k in self.spec.space]
        if TRIAL_INDEX in trial.config:  # `repeat`: the n-th run of a suggestion is seed n
            chosen.append(f"seed={trial.config[TRIAL_INDEX]}")
        return " ".join([trial.trial_id.split("_")[-1], *chosen])

    def total_steps(self, trial) -> int:
        if trial.trial_id not in self.totals:
            c = trial_config(self.spec, self._config(trial))
            pretrains = c.pretrain.dataset not in cfg.PRETRAIN_SPECIAL
            self.totals[trial.trial_id] = (c.pretrain.steps if pretrains else 0) + c.finetune.steps
        return self.totals[trial.trial_id]

    def steps_done(self, trial) -> int:
        if trial.status in ("TERMINATED", "ERROR"):  # nothing left to run
            return self.total_steps(trial)
        result = trial.last_result or {}
        if result.get(PHASE) == "finetune":
            return int(result.get(PRETRAIN_STEP, 0)) + int(result.get(FINETUNE_STEP, 0))
        return int(result.get(PRETRAIN_STEP, 0) or 0)

    def position(self, trial) -> str:
        result = trial.last_result or {}
        phase = result.get(PHASE)
        if phase == "finetune":
            c = trial_config(self.spec, self._config(trial))
            return f"finetune {int(result.get(FINETUNE_STEP, 0))}/{c.finetune.steps}"
        if phase == "pretrain":
            c = trial_config(self.spec, self._config(trial))
            return f"pretrain {int(result.get(PRETRAIN_STEP, 0))}/{c.pretrain.steps}"
        return "starting"

    def feasible(self, result: Mapping[str, Any]) -> bool:
        return all(c.holds(result) for c in self.spec.constraints)

    def best(self, trials: Sequence) -> float | None:
        """The best objective among finished trials that meet the study's constraints."""
        values = [
            float(t.last_result[self.spec.objective])
            for t in trials
            if t.status == "TERMINATED"
            and t.last_result
            and self.feasible(t.last_result)
            and not math.isnan(float(t.last_result.get(self.spec.objective, math.nan)))
        ]
        if not values:
            return None
        return max(values) if self.spec.mode == "max" else min(values)

    # -- the lines ----------------------------------------------------------------------------

    def say(self, text: str) -> None:
        print(f"  {clock(time.monotonic() - self.started):>5}  {text}", flush=True)

    def work(self, trials: Sequence) -> tuple[float, float]:
        """(steps in all, steps done), counting trials the searcher has not created yet as
        long as the mean of those it has."""
        totals = [self.total_steps(t) for t in trials]
        if not totals:
            return 0.0, 0.0
        work = sum(totals) + (self.expected - len(trials)) * sum(totals) / len(totals)
        return work, float(sum(self.steps_done(t) for t in trials))

    def track(self, trials: Sequence) -> None:
        """Note when this launch's first step is done (Ray's start-up and the first worker's
        imports are then behind it) and how much was done by then: the ETA's starting line."""
        if self.moving is not None or not trials:
            return
        _, done = self.work(trials)
        if self.baseline is None:
            self.baseline = done  # what earlier launches of the study did
        elif done > self.baseline:
            self.moving, self.moved_from = time.monotonic(), done

    def eta(self, trials: Sequence) -> str:
        work, done = self.work(trials)
        if work and done >= work:
            return "0:00"
        if self.moving is None or self.baseline is None:
            return "-"
        # No guess from less than a tenth of the work this launch has to do.
        if done - self.moved_from <= 0.1 * (work - self.baseline):
            return "-"
        rate = (done - self.moved_from) / max(time.monotonic() - self.moving, 1e-9)
        return clock((work - done) / rate)

    def status_line(self, trials: Sequence) -> str:
        count = {s: sum(1 for t in trials if t.status == s) for s in ("RUNNING", "TERMINATED")}
        errored = sum(1 for t in trials if t.status == "ERROR")
        running = [t for t in trials if t.status == "RUNNING"]
        where = ", ".join(f"{t.trial_id.split('_')[-1]} {self.position(t)}" for t in running[:4])
        if len(running) > 4:
            where += f", +{len(running) - 4}"
        best = self.best(trials)
        return (
            f"{count['RUNNING']} running, {count['TERMINATED']} finished, {errored} errored "
            f"of {self.expected}" + (f" | {where}" if where else "")
            + f" | best {self.spec.objective} {number(best)} | ETA {self.eta(trials)}"
        )  # fmt: skip

    def guarded(self, show: Callable[[], None]) -> None:
        """A console bug must not stop a study (Tune fails the experiment on a callback's
        exception): the first one is said, and the progress display stops there."""
        if self.broken:
            return
        try:
            show()
        except Exception as exc:
            self.broken = True
            print(f"progress display stopped: {type(exc).__name__}: {exc}", flush=True)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self.guarded(lambda: self.step_end(trials))

    def on_trial_complete(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self.guarded(lambda: self.trial_complete(trial))

    def on_trial_recover(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self.guarded(lambda: self.say(f"retrying {self.label(trial)} after: {_reason(trial)}"))

    def on_trial_error(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self.guarded(lambda: self.say(f"errored {self.label(trial)}: {_reason(trial)}"))

    def step_end(self, trials: list) -> None:
        now = time.monotonic()
        self.track(trials)
        every = min(max(self.every_s, (now - self.started) / 6), 300.0)
        if now - self.last_line >= every and any(t.status == "RUNNING" for t in trials):
            self.last_line = now
            self.say(self.status_line(trials))

    def trial_complete(self, trial) -> None:
        result = trial.last_result or {}
        shown = [self.spec.objective, *(c.metric for c in self.spec.constraints)]
        values = ", ".join(f"{k} {number(result.get(k))}" for k in dict.fromkeys(shown))
        verdict = "" if self.feasible(result) else " (misses the constraints)"
        self.say(f"finished {self.label(trial)}: {values}{verdict}")


def _reason(trial) -> str:
    """The last line of the trial's error trace (the exception and its message)."""
    try:
        text = trial.get_error() or ""
    except Exception:  # the trace lives in storage that may be gone; the run keeps it too
        text = ""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[-1] if lines else "see the trial's MLflow run (tag transinv.error)"


# ---------------------------------------------------------------------------------------------
# The closing summary


def summary_lines(spec: StudySpec, tracking_uri: str) -> list[str]:
    """Per condition (the keys the study varies, seeds pooled), the mean of each objective and
    constraint metric over its finished trials, then chance and the best condition that meets
    the study's constraints against the worst: numbers from MLflow, nothing more."""
    from transinv.results import active_only, best_regimes, condition_keys, load_runs, summarize

    runs = load_runs(spec.name, tracking_uri)
    finished = runs[runs["status"] == "FINISHED"] if len(runs) else runs
    if finished.empty:
        return [f"no finished trials in study {spec.name} to summarize"]
    keys = condition_keys(runs)
    shown = list(dict.fromkeys([*(m for m, _ in spec.objectives or [(spec.objective, "")]),
                                *(c.metric for c in spec.constraints)]))  # fmt: skip
    shown = [m for m in shown if m in runs]
    table = summarize(active_only(runs, keys), keys, shown)
    table = table.sort_values(f"{spec.objective} mean", ascending=spec.mode == "min")
    lines = ["per condition, mean over its finished trials (n):"]
    columns = [*keys, "n", *shown]
    cells = [[_cell(row.get(k)) for k in keys] + [str(int(row["n"]))]
             + [number(row[f"{m} mean"]) for m in shown]
             for _, row in table.iterrows()]  # fmt: skip
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    for row in [columns, *cells]:
        lines.append(
            "  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        )
    chance = finished[metrics.CHANCE].mean() if metrics.CHANCE in finished else None
    if chance is not None and not math.isnan(chance):
        lines.append(f"chance ({metrics.CHANCE}): {chance:.3f}")
    best = best_regimes(runs, spec.objective, by=keys, mode=spec.mode)
    rules = " and ".join(str(c) for c in spec.constraints)
    if best.empty:
        lines.append(f"no condition meets the constraints ({rules})" if rules else "")
        return [line for line in lines if line]
    top = best.iloc[0]
    named = _condition(top, keys)
    spread = f", {number(top['min'])}-{number(top['max'])}" if top["n"] > 1 else ""
    sentence = (
        f"best{' condition meeting ' + rules if rules else ''}: {named}, {spec.objective} "
        f"{number(top['mean'])} (n={int(top['n'])}{spread})"
    )
    worst = table.iloc[-1]
    if len(table) > 1 and _condition(worst, keys) != named:
        sentence += f" vs {number(worst[f'{spec.objective} mean'])} for {_condition(worst, keys)}"
    if chance is not None and not math.isnan(chance):
        sentence += f"; chance {chance:.3f}"
    lines.append(sentence)
    return lines


def _cell(value: Any) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def _condition(row: Mapping[str, Any], keys: Sequence[str]) -> str:
    return " ".join(f"{k}={_cell(row.get(k))}" for k in keys) or "all trials"
