"""The Ray Tune function trainable: one trial of the shared trainer, tracked in its own MLflow run.

Each evaluation becomes one batched MLflow call (plus heatmap images) and one `tune.report` with a
checkpoint holding the trainer state and the MLflow run id, so a restored or retried trial
continues its curve in the same run. Only scalars go to Tune; curves, grids and figures go to
MLflow, the system of record.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune
from ray.tune.search.repeater import TRIAL_INDEX

from study.space import StudySpec, active_params, run_name, sampled_values, trial_config
from transinv import metrics
from transinv.config import to_flat
from transinv.evaluation import Evaluation
from transinv.runlog import RunLog
from transinv.tracking import (
    TAG_HOST,
    TAG_NODE,
    TAG_PARAMS,
    TAG_PID,
    TAG_PRETRAIN_CACHE,
    TAG_WARNING,
    Tracker,
    TrackingOutage,
    TrackingQueue,
)
from transinv.trainer import TrainState, run_trial

STATE_FILE = "state.pt"
META_FILE = "meta.json"
PHASE_STEP = "finetune/step"
"""ASHA's time attribute: our finetuning step, not Tune's count of reports."""
OUTAGE = "tracking_outage"
"""Result key by which a trial tells the driver the tracking server stayed away too long."""


@dataclass(frozen=True)
class StudyContext:
    """What every trial of a study shares (picklable: it travels to Ray workers)."""

    spec: StudySpec
    tracking_uri: str
    parent_run_id: str
    pretrain_cache: str = ""
    """Folder of shared pretrainings (`run.pretrain_cache`), empty for none."""


def _tune_metrics(evaluation: Evaluation, spec: StudySpec, pretrain_steps: int) -> dict[str, Any]:
    """Scalars for Tune: the evaluation's metrics and its position, and always the objective
    (NaN while pretraining) because Tune requires it in every result. Ray's progress table shows
    the first four numeric entries, so the position and the objective come first."""
    finetuning = evaluation.phase == "finetune"
    out: dict[str, Any] = {
        "pretrain/step": pretrain_steps if finetuning else evaluation.step,
        PHASE_STEP: evaluation.step if finetuning else 0,
        spec.objective: evaluation.metrics.get(spec.objective, math.nan),
        metrics.ACC_TRAINED: evaluation.metrics.get(metrics.ACC_TRAINED, math.nan),
    }
    for metric, _ in spec.objectives:  # Tune requires every objective of a searcher too
        out.setdefault(metric, evaluation.metrics.get(metric, math.nan))
    out.update((k, float(v)) for k, v in evaluation.metrics.items())
    out["phase"] = evaluation.phase
    return out


def train(config: dict[str, Any], study: StudyContext) -> None:
    """The function trainable (use with `tune.with_parameters(train, study=...)`)."""
    spec = study.spec
    trial_id = tune.get_context().get_trial_id()
    config = sampled_values(config)
    index = config.pop(TRIAL_INDEX, None)
    trial = trial_config(spec, config)
    seeded = []
    if index is not None:  # `repeat`: the n-th run of a suggestion is seed n
        trial, seeded = replace(trial, seed=int(index)), ["seed"]
    run = trial.run
    if "run.threads" not in spec.fixed:
        # Torch threads follow the trial's CPU share; Ray's resources only schedule.
        run = replace(run, threads=max(1, int(spec.cpu)))
    if study.pretrain_cache and "run.pretrain_cache" not in spec.fixed:
        run = replace(run, pretrain_cache=study.pretrain_cache)
    trial = replace(trial, run=run)
    tracker = Tracker(study.tracking_uri)
    # The queue repeats failed calls itself, for up to run.tracking_outage_s; MLflow's own
    # retries (7, backing off to minutes) would hold one call far past that bound.
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    queue = TrackingQueue(trial.run.tracking_outage_s, f"the MLflow server at {tracker.uri}")
    meta, checkpoint_state = load_checkpoint(tune.get_checkpoint(), trial_id)
    log: RunLog | None = None
    last = {PHASE_STEP: 0}

    def on_eval(evaluation: Evaluation, state: TrainState) -> None:
        log.on_eval(evaluation, state.setup.grid)
        with tempfile.TemporaryDirectory() as d:
            torch.save(state.checkpoint(), Path(d) / STATE_FILE)
            meta = {"run_id": log.run_id, **log.checkpoint_meta()}
            (Path(d) / META_FILE).write_text(json.dumps(meta))
            result = _tune_metrics(evaluation, spec, state.steps_run.get("pretrain", 0))
            last[PHASE_STEP] = result[PHASE_STEP]
            if log.outage:  # the checkpoint above holds every undelivered evaluation
                result[OUTAGE] = log.outage
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(d))

    try:
        run_id = queue.call(
            tracker.trial_run,
            spec.name,
            study.parent_run_id,
            trial_id,
            to_flat(trial),
            tags={TAG_PARAMS: ",".join([*active_params(spec, config), *seeded])},
            run_id=meta.get("run_id"),
            run_name=run_name(spec, config, trial.seed),
        )
        # Where this attempt runs: a killed worker's retry shows up as a new pid (and node).
        where = {
            TAG_HOST: socket.gethostname(),
            TAG_PID: os.getpid(),
            TAG_NODE: ray.get_runtime_context().get_node_id(),
        }
        if meta.get("warning"):
            where[TAG_WARNING] = meta["warning"]
        queue.call(tracker.set_tags, run_id, where)
        delivered = queue.call(tracker.delivered, run_id)
        log = RunLog(tracker, run_id, queue, meta, delivered, trial.run.heatmaps)
        result = run_trial(trial, on_eval, checkpoint_state)
        queue.submit(tracker.set_tags, run_id, {TAG_PRETRAIN_CACHE: result.info["pretrain/cache"]})
        log.finish(result)
    except TrackingOutage as exc:
        # Leave the run as it is; the driver stops the study, which resumes from checkpoints.
        _wait_for_stop({spec.objective: math.nan, **last, "phase": "outage", OUTAGE: str(exc)})
    except SystemExit:
        # How Tune stops a trial (tune.report raises it when the study is interrupted or a
        # scheduler stops the trial): not a failure. The driver closes the run KILLED or
        # FINISHED, and a resumed trial reattaches to it.
        if log is not None:
            log.detach()
        raise
    except BaseException as exc:
        if log is not None:
            log.fail("".join(traceback.format_exception(exc)))
        raise
    final = {k: float(v) for k, v in result.metrics.items()}
    for metric, _ in spec.objectives or [(spec.objective, spec.mode)]:
        final.setdefault(metric, math.nan)
    tune.report({**final, "phase": "done", PHASE_STEP: trial.finetune.steps})


def _wait_for_stop(result: dict[str, Any]) -> None:
    """Tell the driver the tracking server is gone (it then stops the study as on Ctrl-C) and
    wait: `tune.report` raises SystemExit once the driver stops this trial. Returning instead
    would mark the trial finished, and a relaunch would not resume it."""
    while True:
        tune.report(result)
        time.sleep(1.0)


def _read_checkpoint(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    meta = json.loads((folder / META_FILE).read_text())
    if not isinstance(meta, dict) or "run_id" not in meta:
        raise ValueError(f"{META_FILE} holds no run id")
    return meta, torch.load(folder / STATE_FILE, weights_only=False)


def load_checkpoint(
    checkpoint: tune.Checkpoint | None, trial_id: str
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(meta, trainer state) of the trial's newest readable checkpoint: the one Tune restores,
    else (truncated, unreadable) the trial's older ones in local storage, newest first, else
    ({}, None): the trial starts over, into the same run (found by its trial id), and the
    records the server already holds are not logged again. A fallback is printed and noted
    in the checkpoint's `warning` (set as a run tag)."""
    if checkpoint is None:
        return {}, None
    problems = []
    try:
        with checkpoint.as_directory() as d:
            return _read_checkpoint(Path(d))
    except Exception as exc:
        problems.append(f"{checkpoint.path}: {type(exc).__name__}: {exc}")
    latest = Path(checkpoint.path)
    older = sorted(latest.parent.glob("checkpoint_*"), reverse=True) if latest.is_dir() else []
    for folder in (f for f in older if f.name < latest.name):
        try:
            meta, state = _read_checkpoint(folder)
        except Exception as exc:
            problems.append(f"{folder}: {type(exc).__name__}: {exc}")
            continue
        meta["warning"] = _fallback_warning(trial_id, problems, f"resuming from {folder.name}")
        return meta, state
    return {"warning": _fallback_warning(trial_id, problems, "starting over")}, None


def _fallback_warning(trial_id: str, problems: list[str], action: str) -> str:
    text = f"trial {trial_id}: unreadable checkpoint ({'; '.join(problems)}); {action}"
    print(f"WARNING: {text}", file=sys.stderr, flush=True)
    return text
