"""The Ray Tune function trainable: one trial of the shared trainer, tracked in its own MLflow run.

Each evaluation becomes one batched MLflow call (plus heatmap images) and one `tune.report` with a
checkpoint holding the trainer state and the MLflow run id, so a restored or retried trial
continues its curve in the same run. Only scalars go to Tune; curves, grids and figures go to
MLflow, the system of record.
"""

from __future__ import annotations

import json
import math
import tempfile
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ray import tune

from study.space import StudySpec, active_params, trial_config
from transinv import metrics, plots
from transinv.config import to_flat
from transinv.tracking import Tracker
from transinv.trainer import Evaluation, TrainState, TrialResult, run_trial

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


def _tune_metrics(evaluation: Evaluation, spec: StudySpec) -> dict[str, Any]:
    """Scalars for Tune: the evaluation's metrics, its position, and always the objective (NaN
    while pretraining) because Tune requires it in every result."""
    out: dict[str, Any] = {k: float(v) for k, v in evaluation.metrics.items()}
    out["phase"] = evaluation.phase
    out["step"] = evaluation.step
    out[PHASE_STEP] = evaluation.step if evaluation.phase == "finetune" else 0
    out.setdefault(spec.objective, math.nan)
    return out


def _log_images(tracker: Tracker, run_id: str, evaluation: Evaluation, first_or_last: bool):
    for key, grid in evaluation.grids.items():
        is_g = key.startswith("invariance/G_grid/")
        if is_g and not first_or_last:
            continue  # G maps per layer at the start and the end only: accuracy every time
        lo, hi = (-0.2, 1.0) if is_g else (0.0, 1.0)
        tracker.log_image(run_id, plots.grid_image(grid, lo, hi), key, evaluation.step)


def log_summary(tracker: Tracker, run_id: str, result: TrialResult, last: Evaluation | None):
    """End-of-trial artifacts: forgetting summaries, figures and the raw final grid."""
    steps = [s for curve in result.curves.values() for s in curve]
    tracker.log_metrics(run_id, result.metrics, step=max(steps, default=0))
    tracker.log_dict(
        run_id,
        {"metrics": result.metrics, "info": {k: str(v) for k, v in result.info.items()}},
        "final_metrics.json",
    )
    if result.curves:
        tracker.log_figure(run_id, plots.forgetting_figure(result.curves), "forgetting.png")
    tracker.log_figure(
        run_id, plots.invariance_by_layer(result.metrics, "final"), "invariance_by_layer.png"
    )
    if last is not None and metrics.ACC_GRID in last.grids:
        acc = last.grids[metrics.ACC_GRID]
        xs, ys = np.meshgrid(result.grid.xs, result.grid.ys)
        table = {"x": xs.ravel().tolist(), "y": ys.ravel().tolist(), "acc": acc.ravel().tolist()}
        for key, grid in last.grids.items():
            if key.startswith("invariance/G_grid/"):
                table[key.removeprefix("invariance/G_grid/")] = grid.ravel().tolist()
        tracker.log_table(run_id, table, "final_grid.json")


def train(config: dict[str, Any], study: StudyContext) -> None:
    """The function trainable (use with `tune.with_parameters(train, study=...)`)."""
    spec = study.spec
    trial_id = tune.get_context().get_trial_id()
    trial = trial_config(spec, config)
    if "run.threads" not in spec.fixed:
        # Torch threads follow the trial's CPU share; Ray's resources only schedule.
        trial = replace(trial, run=replace(trial.run, threads=max(1, int(spec.cpu))))
    tracker = Tracker(study.tracking_uri)

    checkpoint_state, run_id = None, None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            run_id = json.loads((Path(d) / META_FILE).read_text())["run_id"]
            checkpoint_state = torch.load(Path(d) / STATE_FILE, weights_only=False)
    run_id = tracker.trial_run(
        spec.name,
        study.parent_run_id,
        trial_id,
        to_flat(trial),
        tags={"transinv.params": ",".join(active_params(spec, config))},
        run_id=run_id,
    )
    last: dict[str, Evaluation] = {}

    def on_eval(evaluation: Evaluation, state: TrainState) -> None:
        tracker.log_metrics(run_id, evaluation.metrics, evaluation.step)
        _log_images(tracker, run_id, evaluation, evaluation.step == 0 or evaluation.final)
        tracker.set_tags(run_id, {"transinv.progress": f"{evaluation.phase} {evaluation.step}"})
        last["evaluation"] = evaluation
        with tempfile.TemporaryDirectory() as d:
            torch.save(state.checkpoint(), Path(d) / STATE_FILE)
            (Path(d) / META_FILE).write_text(json.dumps({"run_id": run_id}))
            tune.report(
                _tune_metrics(evaluation, spec), checkpoint=tune.Checkpoint.from_directory(d)
            )

    try:
        result = run_trial(trial, on_eval, checkpoint_state)
        log_summary(tracker, run_id, result, last.get("evaluation"))
        final = {k: float(v) for k, v in result.metrics.items()}
        final.setdefault(spec.objective, math.nan)
        tune.report({**final, "phase": "done", PHASE_STEP: trial.finetune.steps})
    except BaseException as exc:
        tracker.finish(run_id, "FAILED", "".join(traceback.format_exception(exc)))
        raise
    tracker.finish(run_id, "FINISHED")
