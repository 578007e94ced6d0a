"""Tracking cost: the share of a trial's wall time that MLflow tracking adds, on the trials
studies run (the small budget, `search_spaces/base/small_budget.yaml`) and on a smoke trial; and
one batched `log_batch` per evaluation vs one `log_metric` call per metric.

    .venv/bin/python benchmarks/bench_tracking.py            # ~9 min on 2 idle cores
    .venv/bin/python benchmarks/bench_tracking.py --quick    # ~20 s, a smoke check (tiny trials)

Starts its own `mlflow server` on 127.0.0.1 (SQLite, one worker, as the study CLI does). Each
trial runs through `transinv.trainer.run_trial` in this process on one thread (a study trial's
share), alternately without tracking and with exactly the tracking a study trial does
(`transinv.runlog.RunLog`: metrics, heatmap images, the end-of-trial figures, then waiting for
every call); the median extra wall time is the tracking's share of the tracked trial's wall
time. The small-budget trial (the default preset's pretraining on glyphs, 1000 + 300 steps, 7
evaluations a phase) is the primary figure; the smoke study's trial (search_spaces/smoke.yaml,
2 s), where fixed costs dominate, the secondary one. The tracked trial's own record
(`time/tracking_s`, `time/tracking_wait_s`) is read back from MLflow. Part 3 logs the same N
metrics at one step both ways, side by side. Here the tracking thread has the second core to
itself; in a study two trials share two cores.

The smoke trial runs again with fewer rendered maps (`run.heatmaps: ends`, `none`), each against
its own untracked rounds: what the key buys where tracking's fixed costs dominate.

The last line is `bench_tracking: <tracked / untracked small-budget trial wall time>x` (goal
<= 1.02x, a share <= 2%).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from mlflow import MlflowClient
from workloads import PROJECT, trial_keys

from study.server import start_local_server
from study.space import load_space, trial_config
from transinv import metrics
from transinv.config import TrialConfig, from_flat
from transinv.runlog import RunLog
from transinv.tracking import Tracker, TrackingQueue, summary_values
from transinv.trainer import run_trial


def smoke_trial() -> TrialConfig:
    spec = load_space(PROJECT / "search_spaces" / "smoke.yaml")
    sampled = {"pretrain.dataset": "glyphs", "seed": 0}
    return trial_config(spec, sampled)


def budget_trial(quick: bool) -> TrialConfig:
    return from_flat(trial_keys(quick))


def timed_trial(
    config: TrialConfig, tracker: Tracker | None, experiment: str | None
) -> tuple[float, dict[str, float]]:
    """Wall seconds of one trial, and (tracked) the run's own `time/*` record."""
    started = time.perf_counter()
    if tracker is None:
        run_trial(config)
        return time.perf_counter() - started, {}
    client = MlflowClient(tracker.uri)
    run_id = client.create_run(experiment, run_name="bench").info.run_id
    log = RunLog(tracker, run_id, TrackingQueue(), heatmaps=config.run.heatmaps)
    result = run_trial(config, lambda evaluation, state: log.on_eval(evaluation))
    log.finish(result)
    wall = time.perf_counter() - started
    recorded = summary_values(client.get_run(run_id).data.tags)  # time/* is a summary tag
    return wall, {k: v for k, v in recorded.items() if k.startswith("time/")}


def share_of_trial(
    name: str, config: TrialConfig, tracker: Tracker, experiment: str, rounds: int
) -> float:
    """Tracked / untracked wall time (medians over alternating rounds); prints the details."""
    plain, tracked, record = [], [], {}
    for r in range(rounds):
        order = (None, tracker) if r % 2 == 0 else (tracker, None)
        for t in order:
            wall, seen = timed_trial(config, t, experiment)
            (plain if t is None else tracked).append(wall)
            record = seen or record
    t_plain, t_tracked = statistics.median(plain), statistics.median(tracked)
    print(
        f"{name}: without tracking {t_plain:.2f} s, with tracking {t_tracked:.2f} s (medians of "
        f"{rounds}); tracking share {100 * (t_tracked - t_plain) / t_tracked:.1f}%"
    )
    busy, wait = (
        record.get(metrics.time_key(p), float("nan")) for p in ("tracking", "tracking_wait")
    )
    print(
        f"  its run's record: tracking thread busy {busy:.2f} s, waited for at the end {wait:.2f} s"
    )
    return t_tracked / t_plain


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
    parser.add_argument("--quick", action="store_true", help="tiny trials, 1 round: a smoke check")
    parser.add_argument("--rounds", type=int, default=2, help="small-budget rounds")
    parser.add_argument("--smoke-rounds", type=int, default=4)
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.smoke_rounds = 1, 1
    n_metrics = 20 if args.quick else 200

    with tempfile.TemporaryDirectory() as d, start_local_server(Path(d)) as server:
        tracker = Tracker(server.uri)
        experiment = tracker.experiment("bench_tracking")
        print(f"torch {torch.__version__}, 1 thread a trial, cpu; server {server.uri}")
        smoke, budget = smoke_trial(), budget_trial(args.quick)
        timed_trial(budget if args.quick else smoke, None, None)  # warm-up: imports, kernels
        size = "tiny (--quick)" if args.quick else "small budget"
        ratio = share_of_trial(f"{size} trial", budget, tracker, experiment, args.rounds)
        if not args.quick:  # the smoke trial is what --quick would only repeat
            smoke_ratio = share_of_trial(
                "smoke trial", smoke, tracker, experiment, args.smoke_rounds
            )
        # What `run.heatmaps` buys where fixed costs dominate (on --quick, the tiny trial).
        short, lean = budget if args.quick else smoke, {}
        for mode in ("ends", "none"):
            config = replace(short, run=replace(short.run, heatmaps=mode))
            name = f"{'tiny' if args.quick else 'smoke'} trial, run.heatmaps {mode}"
            lean[name] = share_of_trial(name, config, tracker, experiment, args.smoke_rounds)
        batched, looped = batched_vs_per_metric(tracker, experiment, n_metrics, args.smoke_rounds)
        print(f"{n_metrics} metrics at one step: log_batch {1000 * batched:.1f} ms, "
              f"log_metric per metric {1000 * looped:.0f} ms: {looped / batched:.1f}x")  # fmt: skip
    if not args.quick:
        print(f"smoke trial, tracked / untracked: {smoke_ratio:.3f}x (secondary)")
    for name, value in lean.items():
        print(f"{name}, tracked / untracked: {value:.3f}x (secondary)")
    print(f"{size} trial, tracked / untracked (goal <= 1.02x): {ratio:.3f}x")
    print(f"bench_tracking: {ratio:.3f}x")


if __name__ == "__main__":
    main()
