"""What one trial logs to its MLflow run, off the training thread.

Each evaluation is one batched metrics call (with a progress tag) plus heatmap images: accuracy
over the canvas at every evaluation (the MLflow UI shows a step slider), G per layer at the first
and last evaluation of a phase. The end of a trial adds the forgetting summaries, the forgetting
and invariance-by-layer figures and the final grid as a table.

Calls run in order on a background `TrackingQueue`. Evaluations the server has not confirmed yet
are listed by `unconfirmed()` so that a checkpoint can carry them and a restored trial logs them
again (`results.curves` drops the duplicate points). The end of a trial also logs where its time
went (`time/<part>_s`, `metrics.time_key`), with the tracking thread's own busy time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from transinv import metrics, plots
from transinv.evaluation import TestGrid
from transinv.tracking import Tracker, TrackingError, TrackingQueue
from transinv.trainer import Evaluation, TrialResult

G_GRID_PREFIX = "invariance/G_grid/"


class RunLog:
    def __init__(self, tracker: Tracker, run_id: str, pending: Iterable[dict[str, Any]] = ()):
        self.tracker, self.run_id = tracker, run_id
        for entry in pending:  # from the checkpoint this trial resumes
            tracker.log_metrics(run_id, entry["metrics"], entry["step"])
        self.queue = TrackingQueue()
        self.busy_s = 0.0
        """Seconds the tracking thread spent in this attempt's calls."""
        self._unconfirmed: list[tuple[int, dict[str, Any]]] = []
        self.last: Evaluation | None = None

    def on_eval(self, evaluation: Evaluation, grid: TestGrid | None = None) -> None:
        """Log one evaluation; `grid` (the trial's test centres) puts pixels on the heatmaps'
        axes and marks the trained centre."""
        progress = {"transinv.progress": f"{evaluation.phase} {evaluation.step}"}
        number = self._submit(
            self.tracker.log_metrics, self.run_id, evaluation.metrics, evaluation.step, progress
        )
        entry = {"step": evaluation.step, "metrics": dict(evaluation.metrics)}
        self._unconfirmed.append((number, entry))
        self._submit(self._log_images, evaluation, grid)
        self.last = evaluation

    def _submit(self, fn: Callable[..., Any], *args: Any) -> int:
        def timed() -> None:
            started = time.perf_counter()
            try:
                fn(*args)
            finally:
                self.busy_s += time.perf_counter() - started

        return self.queue.submit(timed)

    def unconfirmed(self) -> list[dict[str, Any]]:
        """Evaluations whose metrics the server has not confirmed (JSON-ready)."""
        done = self.queue.completed
        self._unconfirmed = [(n, e) for n, e in self._unconfirmed if n > done]
        return [e for _, e in self._unconfirmed]

    def _log_images(self, evaluation: Evaluation, grid: TestGrid | None) -> None:
        """Each grid as a rendered map (axes in pixels, colour bar, trained centre, key and step
        in the title) under its key and step: the UI's image cards show it with a step slider,
        and the Artifacts view the same picture, not a bare block of colour."""
        every_layer = evaluation.step == 0 or evaluation.final
        chance = evaluation.metrics.get(metrics.CHANCE)
        for key, values in evaluation.grids.items():
            if key.startswith(G_GRID_PREFIX) and not every_layer:
                continue
            rows, cols = values.shape
            xs, ys = (grid.xs, grid.ys) if grid is not None else (np.arange(cols), np.arange(rows))
            trained = grid.trained if grid is not None else None
            figure = plots.evaluation_heatmap(
                key, values, xs, ys, trained, evaluation.phase, evaluation.step, chance
            )
            self.tracker.log_image(self.run_id, plots.to_image(figure), key, evaluation.step)

    def _log_summary(self, result: TrialResult) -> None:
        tracker, run_id = self.tracker, self.run_id
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
        last = self.last
        if last is not None and metrics.ACC_GRID in last.grids:
            xs, ys = np.meshgrid(result.grid.xs, result.grid.ys)
            table = {"x": xs.ravel().tolist(), "y": ys.ravel().tolist()}
            table["acc"] = last.grids[metrics.ACC_GRID].ravel().tolist()
            for key, grid in last.grids.items():
                if key.startswith(G_GRID_PREFIX):
                    table[f"G/{key.removeprefix(G_GRID_PREFIX)}"] = grid.ravel().tolist()
            tracker.log_table(run_id, table, "final_grid.json")

    def finish(self, result: TrialResult) -> None:
        """Log the end-of-trial artifacts, wait for every call, log where the trial's time went,
        and end the run FINISHED."""
        self._submit(self._log_summary, result)
        started = time.perf_counter()
        self.queue.flush()
        seconds = {**result.seconds, "tracking": self.busy_s}
        seconds["tracking_wait"] = time.perf_counter() - started
        steps = [s for curve in result.curves.values() for s in curve]
        times = {metrics.time_key(part): value for part, value in seconds.items()}
        self.tracker.log_metrics(self.run_id, times, step=max(steps, default=0))
        self.tracker.finish(self.run_id, "FINISHED")

    def detach(self) -> None:
        """Deliver what was queued and leave the run's status to the driver: the trial was
        stopped (an interrupted study, a scheduler's early stop), it did not fail."""
        try:
            self.queue.flush()
        except TrackingError:
            pass

    def fail(self, error: str) -> None:
        """End the run FAILED with the error, after what was queued (whose own failure is
        secondary to the trial's)."""
        try:
            self.queue.flush()
        except TrackingError:
            pass
        self.tracker.finish(self.run_id, "FAILED", error)
