"""What one trial logs to its MLflow run, off the training thread.

Each evaluation is one batched metrics call (with a progress tag) plus heatmaps, rendered maps
with pixel axes and a colour bar under `heatmaps/<key>/` in the run's artifacts: accuracy over
the canvas at every evaluation, G per layer at the first and last evaluation of a phase
(`run.heatmaps`: fewer, or none, where a study's trials are many and short). The end
of a trial adds the forgetting drops (metrics; peak steps and times go in summary tags), the
forgetting and invariance-by-layer figures and the final grid as a table.

Calls run in order on a background `TrackingQueue`, which repeats what fails while the server is
away (up to `run.tracking_outage_s`). Every record (each evaluation in order, then the trial's
end summary and its times) is numbered, and its metrics call also sets `TAG_DELIVERED` to that
number, so the server itself says how far it got. A checkpoint carries the number of records
emitted and the evaluations not yet confirmed (`checkpoint_meta`); a restored trial logs a
carried or re-emitted record only when its number is past what the server holds, so
`get_metric_history` has one point per (key, step) whatever was interrupted. Each record keeps
the timestamp it was made with, and the server ignores an identical point, so a call repeated
after a lost reply adds nothing either. The end of a trial also logs where its time went
(`time/<part>_s`, `metrics.time_key`), with the tracking thread's own busy time.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from transinv import metrics, plots
from transinv.evaluation import Evaluation, TrialResult
from transinv.grid import TestGrid
from transinv.tracking import (
    TAG_DELIVERED,
    TAG_PROGRESS,
    Tracker,
    TrackingError,
    TrackingQueue,
    summary_tag,
)


def heatmap_path(key: str, phase: str, step: int) -> str:
    """`heatmaps/finetune_acc_grid/finetune_step_000100.png`: zero-padded, so the Artifacts view
    lists a key's maps in step order (G maps hold both phases' first and last)."""
    return f"heatmaps/{key.replace('/', '_')}/{phase}_step_{step:06d}.png"


def _at_phase_end(evaluation: Evaluation) -> bool:
    """A phase's first or last evaluation: where every grid, G per layer included, is drawn."""
    return evaluation.step == 0 or evaluation.final


def _is_g_grid(key: str) -> bool:
    parts = metrics.invariance_parts(key)
    return parts is not None and parts[0] == "G_grid"


class RunLog:
    """One trial attempt's logging into its run.

    resumed: the checkpoint's `checkpoint_meta()` (None for a fresh start); delivered: how many
    records the server holds (`Tracker.delivered`), read when the attempt starts; heatmaps:
    which evaluations render maps (`run.heatmaps`).
    """

    def __init__(
        self,
        tracker: Tracker,
        run_id: str,
        queue: TrackingQueue,
        resumed: Mapping[str, Any] | None = None,
        delivered: int = 0,
        heatmaps: str = "every",
    ):
        self.tracker, self.run_id, self.queue = tracker, run_id, queue
        self.delivered, self.heatmaps = delivered, heatmaps
        self.emitted = int((resumed or {}).get("emitted", 0))
        self.busy_s = 0.0
        """Seconds the tracking thread spent in this attempt's calls."""
        self._unconfirmed: list[tuple[int, dict[str, Any]]] = []
        self.last: Evaluation | None = None
        for entry in (resumed or {}).get("pending", []):
            # Delivered after the checkpoint was written, by the attempt that wrote it: skip.
            if entry["seq"] > delivered:
                self._send(entry)

    def _send(self, entry: dict[str, Any]) -> None:
        tags = {TAG_PROGRESS: entry["progress"], TAG_DELIVERED: entry["seq"]}
        number = self._submit(
            self.tracker.log_metrics,
            *(self.run_id, entry["metrics"], entry["step"], tags, entry["time"]),
        )
        self._unconfirmed.append((number, entry))

    def on_eval(self, evaluation: Evaluation, grid: TestGrid | None = None) -> None:
        """Log one evaluation; `grid` (the trial's test centres) puts pixels on the heatmaps'
        axes and marks the trained centre."""
        self.emitted += 1
        self.last = evaluation
        if self.emitted <= self.delivered:
            return  # re-emitted after a restore: the server has it from an earlier attempt
        entry = {
            "seq": self.emitted,
            "step": evaluation.step,
            "metrics": dict(evaluation.metrics),
            "time": int(time.time() * 1000),
            "progress": f"{evaluation.phase} {evaluation.step}",
        }
        self._send(entry)
        if self.heatmaps == "every" or (self.heatmaps == "ends" and _at_phase_end(evaluation)):
            self._submit(self._log_images, evaluation, grid)

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

    def checkpoint_meta(self) -> dict[str, Any]:
        """What a checkpoint carries for the run: records emitted, evaluations unconfirmed."""
        return {"emitted": self.emitted, "pending": self.unconfirmed()}

    @property
    def outage(self) -> str | None:
        """Why tracking stopped (the server away too long), None while it works."""
        return str(self.queue.outage) if self.queue.outage is not None else None

    def _log_images(self, evaluation: Evaluation, grid: TestGrid | None) -> None:
        """Each grid as a rendered map (axes in pixels, colour bar, trained centre, key and step
        in the title) at `heatmap_path`: one folder per key in the run's Artifacts, in step
        order. Not `log_image` with a step: MLflow 3.17's image cards head each run with all
        of its ~60 params, which push the image out of view even in full screen."""
        every_layer = _at_phase_end(evaluation)
        chance = evaluation.metrics.get(metrics.CHANCE)
        for key, values in evaluation.grids.items():
            if _is_g_grid(key) and not every_layer:
                continue
            rows, cols = values.shape
            xs, ys = (grid.xs, grid.ys) if grid is not None else (np.arange(cols), np.arange(rows))
            trained = grid.trained if grid is not None else None
            figure = plots.evaluation_heatmap(
                key, values, xs, ys, trained, evaluation.phase, evaluation.step, chance
            )
            path = heatmap_path(key, evaluation.phase, evaluation.step)
            self.tracker.log_figure(self.run_id, figure, path)

    def _log_summary(self, result: TrialResult) -> None:
        tracker, run_id = self.tracker, self.run_id
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
                if _is_g_grid(key):
                    table[metrics.grid_column(key)] = grid.ravel().tolist()
            tracker.log_table(run_id, table, "final_grid.json")

    def _log_record(
        self, seq: int, values: Mapping[str, float], step: int, name: str, notes: Mapping
    ) -> None:
        """An end-of-trial record (numbered after the evaluations), unless the server has it:
        `values` as metrics, `notes` as the summary tag `name` (`tracking.summary_tag`)."""
        if seq > self.delivered:
            stamp = int(time.time() * 1000)
            tags = {TAG_DELIVERED: seq, summary_tag(name): json.dumps(dict(notes))}
            self.tracker.log_metrics(self.run_id, values, step, tags, stamp)

    def finish(self, result: TrialResult) -> None:
        """Log the end-of-trial summary and artifacts, wait for every call, log where the
        trial's time went, and end the run FINISHED. Raises TrackingOutage if the server stays
        away longer than the bound (the trial's last checkpoint holds what is missing).

        The summary holds only the forgetting summaries: the final evaluation's metrics are
        already in the run at its step, and logging them again would duplicate those points.
        Only the drops (results: analyses, reports and objectives rank by them) are metrics;
        peak steps and where the time went are summary tags, so the run's metrics page is
        curves, not a score of one-point charts (`results.load_runs` reads both as columns)."""
        steps = [s for curve in result.curves.values() for s in curve]
        step = max(steps, default=0)
        summary = {k: result.metrics[k] for k in metrics.forgetting_summary(result.curves)}
        drops = {metrics.drop_key(curve) for curve in result.curves}
        kept = {k: v for k, v in summary.items() if k in drops}
        peaks = {k: v for k, v in summary.items() if k not in drops}
        self._submit(self._log_record, self.emitted + 1, kept, step, "forgetting", peaks)
        self._submit(self._log_summary, result)
        started = time.perf_counter()
        self.queue.flush()
        seconds = {**result.seconds, "tracking": self.busy_s}
        seconds["tracking_wait"] = time.perf_counter() - started
        times = {metrics.time_key(part): value for part, value in seconds.items()}
        self.queue.call(self._log_record, self.emitted + 2, {}, step, "time", times)
        self.queue.call(self.tracker.finish, self.run_id, "FINISHED")

    def detach(self, timeout_s: float = 5.0) -> None:
        """Deliver what was queued, for a few seconds at most (the checkpoint holds the rest),
        and leave the run's status to the driver: the trial was stopped (an interrupted study,
        a scheduler's early stop, a tracking outage), it did not fail."""
        try:
            self.queue.flush(timeout_s)
        except TrackingError:
            pass

    def fail(self, error: str, timeout_s: float = 5.0) -> None:
        """End the run FAILED with the error, after what was queued (whose own failure is
        secondary to the trial's; with the server away the driver closes the run)."""
        try:
            self.queue.flush(timeout_s)
            self.tracker.finish(self.run_id, "FAILED", error)
        except Exception:
            pass
