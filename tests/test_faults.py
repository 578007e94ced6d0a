"""Faults a study must survive, injected against the real servers on loopback: the MLflow server
going away mid-study (for less and for longer than `run.tracking_outage_s`), a second driver on
the same study, a killed driver's stale lock, a corrupt trial checkpoint. Each asserts nothing
lost and nothing duplicated, point by point in MLflow's own metric history."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from test_study import (
    assert_one_point_per_step,
    driver,
    finish,
    kill_group,
    progress,
    trial_runs,
    wait_for,
    write_space,
)

from study.server import free_port, start_local_server
from transinv import metrics
from transinv.tracking import Tracker, TrackingError, TrackingOutage, TrackingQueue

pytestmark = pytest.mark.slow(minutes=12)

LR = "optim.lr: {loguniform: [0.001, 0.01]}"


def both_training(uri: str, study: str, trials: int = 2) -> bool:
    runs = trial_runs(uri, study)
    return len(runs) == trials and all(progress(r)[1] >= 0 for r in runs)


def driver_logged(space: Path, uri: str, home: Path, log: Path, *extra: str) -> subprocess.Popen:
    """`driver`, with its output in a file a test can read while it runs."""
    env = {**os.environ, "TRANSINV_HOME": str(home), "RAY_USAGE_STATS_ENABLED": "0"}
    with open(log, "w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "study", "run", str(space), "--tracking-uri", uri, *extra],
            env=env, stdout=out, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )  # fmt: skip


@pytest.fixture
def home(tmp_path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def no_client_retries(monkeypatch):
    """As in a trial: the queue repeats calls, MLflow's client does not (`study/trial.py`)."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")


def test_tracking_queue_holds_calls_while_the_server_is_away(tmp_path, no_client_retries):
    """Submitting never waits; calls the server has not confirmed stay unconfirmed (the bug:
    a failed call used to count as completed); they arrive once the server is back on the same
    port and store; an outage past the bound stops the queue; a refused call is an error."""
    port, store = free_port(), tmp_path / "store"
    server = start_local_server(store, port=port)
    tracker = Tracker(server.uri)
    run_id = tracker.trial_run("q", "", "t1", {"a": 1})
    server.stop()

    queue = TrackingQueue(outage_s=120)
    started = time.monotonic()
    numbers = [queue.submit(tracker.log_metrics, run_id, {"m": float(s)}, s) for s in range(3)]
    assert time.monotonic() - started < 0.5  # never waits for the server
    time.sleep(2)
    assert queue.completed == 0 and queue.retries > 0 and queue.outage is None
    assert queue.flush(timeout_s=0.1) is False

    server = start_local_server(store, port=port)
    try:
        assert queue.flush(timeout_s=60)
        assert queue.completed == numbers[-1]
        history = tracker.metric_history(run_id, "m")
        assert sorted(m.step for m in history) == [0, 1, 2]

        # A reply lost after the server stored the point: the same call again adds nothing.
        tracker.log_metrics(run_id, {"m": 5.0}, 5, timestamp_ms=1234)
        tracker.log_metrics(run_id, {"m": 5.0}, 5, timestamp_ms=1234)
        assert [m.step for m in tracker.metric_history(run_id, "m")].count(5) == 1

        # Refused (no such run): not retried, not confirmed, raised to the training thread.
        refused = TrackingQueue(outage_s=120)
        refused.submit(tracker.log_metrics, "0" * 32, {"m": 1.0}, 0)
        with pytest.raises(TrackingError):
            refused.flush(timeout_s=30)
        assert refused.completed == 0 and refused.retries == 0
    finally:
        server.stop()

    short = TrackingQueue(outage_s=1.5, server=f"the MLflow server at {server.uri}")
    short.submit(tracker.log_metrics, run_id, {"m": 9.0}, 9)
    wait_for(lambda: short.outage is not None, timeout=30)
    assert short.completed == 0 and server.uri in str(short.outage)
    with pytest.raises(TrackingOutage):
        short.flush()


def test_server_outage_mid_study_loses_and_duplicates_nothing(tmp_path, home):
    """The MLflow server stops while two trials train and comes back 15 s later on the same
    port and store: trials train on, deliver what they held, and every step is there once."""
    port, store = free_port(), tmp_path / "mlflow"
    server = start_local_server(store, port=port)
    uri = server.uri
    space = write_space(tmp_path, "outage", LR, pretrain_steps=200, finetune_steps=100)
    proc = driver(space, uri, home)
    try:
        wait_for(lambda: both_training(uri, "outage"), timeout=300)
        server.stop()
        down = time.time()
        time.sleep(15)
        server = start_local_server(store, port=port)
        up = time.time()
        code, out = finish(proc, timeout=600)
        assert code == 0, out
        runs = trial_runs(uri, "outage")
        assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}, out
        assert_one_point_per_step(uri, "outage", 200, 100)
        # Training went on while the server was away: points made then arrived later.
        client = MlflowClient(uri)
        stamps = [
            m.timestamp / 1000
            for r in runs
            for key in (metrics.PRETRAIN_LOSS, metrics.ACC_UNTRAINED)
            for m in client.get_metric_history(r.info.run_id, key)
        ]
        assert any(down < t < up for t in stamps)
    finally:
        kill_group(proc)
        server.stop()


def test_outage_past_the_bound_stops_resumably_and_relaunch_loses_nothing(tmp_path, home):
    """With run.tracking_outage_s = 4, the server staying away stops the study (exit 130, the
    server named); trials checkpointed what they held; after the server is back, the same
    command finishes into the same runs with every step once."""
    port, store = free_port(), tmp_path / "mlflow"
    server = start_local_server(store, port=port)
    uri = server.uri
    space = write_space(tmp_path, "bound", LR, pretrain_steps=200, finetune_steps=60)
    space.write_text(
        space.read_text().replace(
            "  run.threads: 1\n", "  run.threads: 1\n  run.tracking_outage_s: 4\n"
        )
    )
    proc = driver(space, uri, home)
    try:
        wait_for(lambda: both_training(uri, "bound"), timeout=300)
        before = {r.info.run_id for r in trial_runs(uri, "bound")}
        server.stop()
        code, out = finish(proc, timeout=300)
        assert code == 130 and uri in out and "run.tracking_outage_s" in out, out
        kill_group(proc)
        server = start_local_server(store, port=port)
        code, out = finish(driver(space, uri, home), timeout=600)
        assert code == 0, out
        runs = trial_runs(uri, "bound")
        assert {r.info.run_id for r in runs} == before
        assert {r.info.status for r in runs} == {"FINISHED"}
        assert_one_point_per_step(uri, "bound", 200, 60)
    finally:
        kill_group(proc)
        server.stop()


def test_second_driver_is_refused_or_waits_and_a_killed_drivers_lock_never_blocks(
    tmp_path, tracking_uri, home
):
    """A second launch of a running study is refused naming the driver (host, pid, since);
    with --wait it waits, and takes over as soon as the first is killed with kill -9, resuming
    the study into the same run with every step once."""
    space = write_space(tmp_path, "twice", LR, samples=1, pretrain_steps=200, finetune_steps=60)
    first = driver(space, tracking_uri, home)
    waiter, log = None, tmp_path / "waiter.log"
    try:
        wait_for(lambda: both_training(tracking_uri, "twice", trials=1), timeout=300)
        # Frozen, the driver holds its lock and its trial waits at its next report: the study
        # cannot end before the other launches, however slow the machine.
        os.kill(first.pid, signal.SIGSTOP)
        started = time.monotonic()
        code, out = finish(driver(space, tracking_uri, home), timeout=300)
        assert code == 2 and "already running" in out, out
        assert time.monotonic() - started < 60  # before any server or Ray starts
        assert f"driver pid {first.pid} on host {socket.gethostname()} since" in out
        waiter = driver_logged(space, tracking_uri, home, log, "--wait")
        wait_for(lambda: f"waiting for driver pid {first.pid}" in log.read_text(), timeout=300)
        os.kill(first.pid, signal.SIGKILL)  # the driver alone: its lock goes with it
        kill_group(first)
        assert waiter.wait(timeout=600) == 0, log.read_text()
        runs = trial_runs(tracking_uri, "twice")
        assert len(runs) == 1 and runs[0].info.status == "FINISHED"
        assert_one_point_per_step(tracking_uri, "twice", 200, 60)
    finally:
        kill_group(first)
        if waiter is not None:
            kill_group(waiter)


def test_corrupt_checkpoints_fall_back_to_the_newest_readable_one(tmp_path, tracking_uri, home):
    """An interrupted trial's newest checkpoints are damaged (state truncated, metadata not
    JSON): the relaunch resumes it from the newest readable one, says so on the run, and every
    step is in MLflow once. (Which checkpoint Tune restores can lag the newest folder, so every
    one but the oldest is damaged.)"""
    space = write_space(tmp_path, "corrupt", LR, samples=1, pretrain_steps=200, finetune_steps=60)
    proc = driver(space, tracking_uri, home)
    try:
        # Several checkpoints written (pretraining evaluates every 10 steps).
        wait_for(lambda: any(progress(r)[1] >= 50 for r in trial_runs(tracking_uri, "corrupt")),
                 timeout=300)  # fmt: skip
        os.kill(proc.pid, signal.SIGINT)
        code, out = finish(proc)
        assert code == 130, out
    finally:
        kill_group(proc)
    (trial_dir,) = (home / "ray_results" / "corrupt").glob("train_*")
    oldest, *damaged = sorted(trial_dir.glob("checkpoint_*"))
    assert damaged
    state = damaged[-1] / "state.pt"
    state.write_bytes(state.read_bytes()[:200])  # truncated
    for folder in damaged[:-1]:
        (folder / "meta.json").write_text("{not json")

    code, out = finish(driver(space, tracking_uri, home))
    assert code == 0, out
    (run,) = trial_runs(tracking_uri, "corrupt")
    assert run.info.status == "FINISHED"
    warning = run.data.tags["transinv.warning"]
    assert "unreadable checkpoint" in warning and f"resuming from {oldest.name}" in warning
    assert_one_point_per_step(tracking_uri, "corrupt", 200, 60)
