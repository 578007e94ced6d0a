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
import tempfile
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune
from ray.tune.search.repeater import TRIAL_INDEX

from study.space import StudySpec, active_params, run_name, trial_config
from transinv import metrics
from transinv.config import to_flat
from transinv.runlog import RunLog
from transinv.tracking import TAG_HOST, TAG_NODE, TAG_PARAMS, TAG_PID, TAG_PRETRAIN_CACHE, Tracker
from transinv.trainer import Evaluation, TrainState, run_trial

STATE_FILE = "state.pt"
META_FILE = "meta.json"
PHASE_STEP = "finetune/step"
"""ASHA's time attribute: our finetuning step, not Tune's count of reports."""


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
    config = dict(config)
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

    checkpoint_state, run_id, pending = None, None, []
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            meta = json.loads((Path(d) / META_FILE).read_text())
            run_id, pending = meta["run_id"], meta["pending"]
            checkpoint_state = torch.load(Path(d) / STATE_FILE, weights_only=False)
    run_id = tracker.trial_run(
        spec.name,
        study.parent_run_id,
        trial_id,
        to_flat(trial),
        tags={TAG_PARAMS: ",".join([*active_params(spec, config), *seeded])},
        run_id=run_id,
        run_name=run_name(spec, config, trial.seed),
    )
    # Where this attempt runs: a killed worker's retry shows up as a new pid (and node).
    tracker.set_tags(
        run_id,
        {
            TAG_HOST: socket.gethostname(),
            TAG_PID: os.getpid(),
            TAG_NODE: ray.get_runtime_context().get_node_id(),
        },
    )
    log = RunLog(tracker, run_id, pending)

    def on_eval(evaluation: Evaluation, state: TrainState) -> None:
        log.on_eval(evaluation, state.setup.grid)
        with tempfile.TemporaryDirectory() as d:
            torch.save(state.checkpoint(), Path(d) / STATE_FILE)
            meta = {"run_id": run_id, "pending": log.unconfirmed()}
            (Path(d) / META_FILE).write_text(json.dumps(meta))
            tune.report(
                _tune_metrics(evaluation, spec, state.steps_run.get("pretrain", 0)),
                checkpoint=tune.Checkpoint.from_directory(d),
            )

    try:
        result = run_trial(trial, on_eval, checkpoint_state)
        tracker.set_tags(run_id, {TAG_PRETRAIN_CACHE: result.info["pretrain/cache"]})
        log.finish(result)
    except SystemExit:
        # How Tune stops a trial (tune.report raises it when the study is interrupted or a
        # scheduler stops the trial): not a failure. The driver closes the run KILLED or
        # FINISHED, and a resumed trial reattaches to it.
        log.detach()
        raise
    except BaseException as exc:
        log.fail("".join(traceback.format_exception(exc)))
        raise
    final = {k: float(v) for k, v in result.metrics.items()}
    for metric, _ in spec.objectives or [(spec.objective, spec.mode)]:
        final.setdefault(metric, math.nan)
    tune.report({**final, "phase": "done", PHASE_STEP: trial.finetune.steps})
