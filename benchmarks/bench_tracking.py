"""Tracking cost: (1) share of a smoke trial's wall time that MLflow tracking adds, and (2) one
batched `log_batch` per evaluation vs one `log_metric` call per metric.

    .venv/bin/python benchmarks/bench_tracking.py            # ~2 min on 2 cores
    .venv/bin/python benchmarks/bench_tracking.py --quick    # ~30 s

Starts its own `mlflow server` on 127.0.0.1 (SQLite, one worker, as the study CLI does). Part 1
runs the smoke study's trial (search_spaces/smoke.yaml, pretraining on glyphs) through
`transinv.trainer.run_trial` in this process, alternately without tracking and with exactly the
tracking a study trial does (`transinv.runlog.RunLog`: metrics, heatmap images, the end-of-trial
figures, then waiting for every call), and reports the median extra wall time as a share of the
tracked trial's wall time. Part 2 logs the same N metrics at one step both ways, side by side.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from mlflow import MlflowClient

from study.server import start_local_server
from study.space import load_space, trial_config
from transinv.runlog import RunLog
from transinv.tracking import Tracker
from transinv.trainer import run_trial

PROJECT = Path(__file__).resolve().parents[1]


def smoke_trial():
    spec = load_space(PROJECT / "search_spaces" / "smoke.yaml")
    sampled = {"pretrain.dataset": "glyphs", "pretrain.translation": 0.5, "finetune.freeze": "none"}
    return spec, trial_config(spec, sampled)


def timed_trial(config, tracker: Tracker | None, experiment: str | None) -> float:
    started = time.perf_counter()
    if tracker is None:
        run_trial(config)
    else:
        run_id = MlflowClient(tracker.uri).create_run(experiment, run_name="bench").info.run_id
        log = RunLog(tracker, run_id)
        result = run_trial(config, lambda evaluation, state: log.on_eval(evaluation))
        log.finish(result)
    return time.perf_counter() - started


def batched_vs_per_metric(tracker: Tracker, experiment: str, n: int, rounds: int):
    values = {f"invariance/G/layer{i}": i / n for i in range(n)}
    batched, looped = [], []
    client = MlflowClient(tracker.uri)  # the raw per-call API is what the batch is measured against
    for r in range(rounds):
        run_id = client.create_run(experiment, run_name=f"batch-{r}").info.run_id
        started = time.perf_counter()
        tracker.log_metrics(run_id, values, step=r)
        batched.append(time.perf_counter() - started)
        started = time.perf_counter()
        for key, value in values.items():
            client.log_metric(run_id, key, value, step=r)
        looped.append(time.perf_counter() - started)
    return statistics.median(batched), statistics.median(looped)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a smoke trial's)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rounds = 2 if args.quick else 4
    n_metrics = 100 if args.quick else 200

    spec, config = smoke_trial()
    with tempfile.TemporaryDirectory() as d, start_local_server(Path(d)) as server:
        tracker = Tracker(server.uri)
        experiment = tracker.experiment("bench_tracking")
        print(f"torch {torch.__version__}, {args.threads} thread(s), cpu; server {server.uri}")
        print(f"trial: {spec.path.name} with pretrain.dataset=glyphs, {rounds} rounds each")
        timed_trial(config, None, None)  # warm-up: imports, dataset cache, oneDNN kernels
        plain, tracked = [], []
        for _ in range(rounds):
            plain.append(timed_trial(config, None, None))
            tracked.append(timed_trial(config, tracker, experiment))
        t_plain, t_tracked = statistics.median(plain), statistics.median(tracked)
        share = (t_tracked - t_plain) / t_tracked
        print(f"smoke trial without tracking: {t_plain:.2f} s (median of {rounds})")
        print(f"smoke trial with tracking:    {t_tracked:.2f} s (median of {rounds})")
        print(f"tracking share of trial wall time: {100 * share:.1f}% (target <= 2%)")

        batched, looped = batched_vs_per_metric(tracker, experiment, n_metrics, rounds)
        print(f"{n_metrics} metrics at one step: log_batch {1000 * batched:.1f} ms, "
              f"log_metric per metric {1000 * looped:.0f} ms")  # fmt: skip
    print(f"bench_tracking: {looped / batched:.1f}x")


if __name__ == "__main__":
    main()
