"""What `RunLog` puts in a run, against the real MLflow server: `run.heatmaps` decides which
evaluations render maps, and never which metrics are logged."""

from __future__ import annotations

import numpy as np
import pytest
from mlflow import MlflowClient

from transinv import metrics
from transinv.evaluation import Evaluation
from transinv.runlog import RunLog, heatmap_path
from transinv.tracking import Tracker, TrackingQueue

STEPS = (0, 10, 20)


@pytest.mark.parametrize("mode, drawn", [("every", STEPS), ("ends", (0, 20)), ("none", ())])
def test_run_heatmaps_decides_which_evaluations_are_drawn(mode, drawn, tracking_uri):
    tracker, client = Tracker(tracking_uri), MlflowClient(tracking_uri)
    run_id = client.create_run(tracker.experiment(f"heatmaps_{mode}")).info.run_id
    log = RunLog(tracker, run_id, TrackingQueue(), heatmaps=mode)
    for step in STEPS:
        log.on_eval(
            Evaluation(
                "finetune",
                step,
                {metrics.ACC_UNTRAINED: step / 100},
                {metrics.ACC_GRID: np.full((3, 3), step / 100)},
                final=step == STEPS[-1],
            )
        )
    assert log.queue.flush(timeout_s=60)
    folder = heatmap_path(metrics.ACC_GRID, "finetune", 0).rsplit("/", 1)[0]
    maps = [a.path for a in client.list_artifacts(run_id, folder)]
    assert maps == [heatmap_path(metrics.ACC_GRID, "finetune", s) for s in drawn]
    history = client.get_metric_history(run_id, metrics.ACC_UNTRAINED)
    assert sorted(m.step for m in history) == list(STEPS)
