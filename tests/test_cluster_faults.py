"""Faults injected into docker-compose.yml's topology on loopback, against the real servers
(tests/cluster_fixtures.py): the connection budget under 8 concurrent trials, PostgreSQL
restarted mid-study, and a worker node lost mid-trial. Each test asserts that nothing is lost
(runs, steps, points) and nothing duplicated.

The stack is this module's own: PostgreSQL with a small `max_connections` that the compose
file's pool settings respect at two MLflow workers, the compose MLflow server (basic auth), and
a Ray head plus one worker node with 4 logical CPUs each (resources only schedule: 8 tiny
trials at once on 2 cores).

    .venv/bin/pytest tests/test_cluster_faults.py -q   # ~8 min on 2 cores (busy: 4 + 4 min)
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from cluster_fixtures import (
    CREDENTIALS,
    assert_one_point_per_step,
    compose_service,
    mlflow_pool_env,
    postgres_setting,
    progress,
    run_study,
    running_mlflow,
    running_postgres,
    running_ray_cluster,
    start_study,
    stop_group,
    trial_runs,
)
from mlflow import MlflowClient
from test_study import wait_for

from transinv import metrics

pytestmark = pytest.mark.slow(minutes=6)

MLFLOW_WORKERS = 2
ENGINES_PER_PROCESS = 2
"""SQLAlchemy engines on the backend store per MLflow process: the tracking store's and the
model registry's (each class caches its own); the user store is SQLite."""


def connection_budget(workers: int) -> int:
    """The most connections the MLflow server can open to PostgreSQL: its parent process and
    each worker, every engine at its pool size plus overflow."""
    pool = mlflow_pool_env()
    per_engine = int(pool["MLFLOW_SQLALCHEMYSTORE_POOL_SIZE"]) + int(
        pool["MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW"]
    )
    return (workers + 1) * ENGINES_PER_PROCESS * per_engine


MAX_CONNECTIONS = connection_budget(MLFLOW_WORKERS) + 4
"""Small: the server's whole budget plus the test's own sampling connection and PostgreSQL's
superuser reserve. SQLAlchemy's default pools (5 + 10 overflow per engine) would not fit."""

SPACE = """\
# fault-injection study on the loopback cluster
study: {name}
objective: {{metric: finetune/acc_untrained, mode: max}}
search: {{sampler: random, seed: 0}}
samples: {samples}
max_concurrent: {samples}
resources: {{cpu: {cpu}, gpu: 0}}
fixed:
  model.arch: tiny_cnn
  canvas.size: 32
  canvas.item_size: 8
  pretrain.steps: {pretrain}
  finetune.steps: {finetune}
  optim.batch_size: 16
  eval.every: {every}
  eval.items: 16
  eval.pretrain_items: 32
  eval.grid_step: 0.25
  run.threads: 1
space:
  optim.lr: {{loguniform: [0.001, 0.01]}}
"""


def write_space(folder: Path, name: str, samples: int, cpu: int, pretrain: int, finetune: int,
                every: int) -> Path:  # fmt: skip
    path = folder / f"{name}.yaml"
    text = SPACE.format(
        name=name, samples=samples, cpu=cpu, pretrain=pretrain, finetune=finetune, every=every
    )
    path.write_text(text)
    return path


def schedule(pretrain: int, finetune: int, every: int) -> dict[str, list[int]]:
    """The evaluation steps of one pretraining and one finetuning key."""
    return {
        metrics.PRETRAIN_ACC: list(range(0, pretrain + 1, every)),
        metrics.ACC_UNTRAINED: list(range(0, finetune + 1, every)),
    }


@pytest.fixture(scope="module")
def postgres():
    with running_postgres(MAX_CONNECTIONS) as pg:
        yield pg


@pytest.fixture(scope="module")
def mlflow_pg(postgres, tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-faults")
    with running_mlflow(postgres, root, workers=MLFLOW_WORKERS) as server:
        yield server


@pytest.fixture(scope="module")
def ray_cluster():
    with running_ray_cluster(workers=1, cpus=4, env=CREDENTIALS) as cluster:
        yield cluster


# -- the connection budget -----------------------------------------------------------------------


def test_compose_pool_fits_postgres_max_connections():
    command = compose_service("mlflow")["command"]
    workers = int(command[command.index("--workers") + 1])
    pool = mlflow_pool_env()
    # MLflow 3.17.2 drops a falsy overflow (0), which leaves SQLAlchemy's default of 10.
    assert int(pool["MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW"]) >= 1
    reserve = 10  # psql, pg_dump, PostgreSQL's superuser slots
    assert connection_budget(workers) + reserve <= int(postgres_setting("max_connections"))


def test_eight_concurrent_trials_stay_within_the_connection_budget(
    ray_cluster, mlflow_pg, postgres, tmp_path
):
    sql = "SELECT count(*) FROM pg_stat_activity WHERE datname = 'mlflow'"
    peak, done = [0], threading.Event()

    def sample() -> None:  # this sampler's own connection is counted, and allowed for
        while not done.is_set():
            peak[0] = max(peak[0], postgres.query(sql)[0][0] - 1)
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    space = write_space(tmp_path, "budget", samples=8, cpu=1, pretrain=10, finetune=10, every=5)
    try:
        code, out, seconds = run_study(
            ray_cluster, mlflow_pg.uri, space, tmp_path / "results", tmp_path / "home", timeout=480
        )
    finally:
        done.set()
        sampler.join()
    assert code == 0, out
    assert "8 of 8 trials finished, 0 errored" in out, out
    runs = trial_runs(mlflow_pg.uri, "budget")
    assert len(runs) == 8 and {r.info.status for r in runs} == {"FINISHED"}
    # Trials overlapped: the most runs open at one moment (all 8 on an idle machine; a loaded
    # one starts the 8 workers more slowly than tiny trials end, so require real concurrency).
    overlap = max(
        sum(r.info.start_time <= t.info.start_time < r.info.end_time for r in runs) for t in runs
    )
    assert overlap >= 2, overlap
    points = assert_one_point_per_step(mlflow_pg.uri, "budget", schedule(10, 10, 5))
    log = mlflow_pg.log.read_text(errors="replace")
    assert "'pool_size': 4, 'max_overflow': 2" in log  # the compose settings took effect
    for sign in ("too many clients", "QueuePool limit", "OperationalError"):
        assert sign not in log and sign not in postgres.log.read_text(errors="replace"), sign
    assert peak[0] <= connection_budget(MLFLOW_WORKERS) < MAX_CONNECTIONS
    print(
        f"8 trials, {overlap} at once: {seconds:.0f} s, {points} points, peak {peak[0]} of "
        f"{MAX_CONNECTIONS} connections (budget {connection_budget(MLFLOW_WORKERS)})"
    )


# -- PostgreSQL restarted mid-study --------------------------------------------------------------


OUTAGE_S = 20


def point_times(uri: str, study: str, key: str) -> list[float]:
    """When each point of `key` was made (a point keeps its time however late it arrives)."""
    mlflow = MlflowClient(uri)
    return [
        m.timestamp / 1000
        for run in trial_runs(uri, study)
        for m in mlflow.get_metric_history(run.info.run_id, key)
    ]


def tune_results(storage: Path, study: str, trial_id: str) -> list[dict]:
    """Every result Tune recorded for a trial (its JSON logger, on for these studies)."""
    return [
        json.loads(line)
        for path in (storage / study).glob(f"*{trial_id}*/result.json")
        for line in path.read_text().splitlines()
        if line.strip()
    ]


def test_postgres_restart_mid_study_loses_and_duplicates_nothing(
    ray_cluster, mlflow_pg, postgres, tmp_path
):
    # Long enough pretraining (tiny steps, few evaluations) that training is still going on
    # when the database stops, however late a loaded machine notices the first evaluations.
    space = write_space(tmp_path, "pgrestart", samples=2, cpu=1, pretrain=3000, finetune=100,
                        every=50)  # fmt: skip
    storage, home = tmp_path / "results", tmp_path / "home"
    proc = start_study(ray_cluster, mlflow_pg.uri, space, storage, home)
    try:

        def logging() -> bool:
            runs = trial_runs(mlflow_pg.uri, "pgrestart") if proc.poll() is None else []
            return len(runs) == 2 and all(progress(r)[1] >= 50 for r in runs)

        wait_for(logging, timeout=180, every=0.5)
        stopped = time.time()
        postgres.stop("fast")  # every client connection closed, as a container restart does
        time.sleep(OUTAGE_S)
        postgres.start()
        restarted = time.time()
        out, _ = proc.communicate(timeout=420)
    finally:
        stop_group(proc, grace_s=2.0)
    assert proc.returncode == 0, out
    assert "2 of 2 trials finished, 0 errored" in out, out
    # Training went on while the database was away, and what it made then arrived later.
    made = [
        t
        for key in (metrics.PRETRAIN_ACC, metrics.ACC_UNTRAINED)
        for t in point_times(mlflow_pg.uri, "pgrestart", key)
    ]
    assert any(stopped + 2 < t < restarted for t in made), (stopped, restarted, sorted(made))
    runs = trial_runs(mlflow_pg.uri, "pgrestart")
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    points = assert_one_point_per_step(mlflow_pg.uri, "pgrestart", schedule(3000, 100, 50))
    print(f"PostgreSQL down {restarted - stopped:.0f} s mid-study: {points} points, 0 lost")


# -- a worker node lost mid-trial ----------------------------------------------------------------


def test_lost_worker_node_trial_resumes_on_the_head_into_the_same_run(
    ray_cluster, mlflow_pg, tmp_path
):
    # 4 CPUs a trial: one trial per node.
    space = write_space(tmp_path, "nodeloss", samples=2, cpu=4, pretrain=300, finetune=60,
                        every=20)  # fmt: skip
    storage, home = tmp_path / "results", tmp_path / "home"
    env = {**ray_cluster.env, "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "0"}  # result.json
    proc = start_study(ray_cluster, mlflow_pg.uri, space, storage, home, env=env)
    try:

        def on_worker():
            runs = trial_runs(mlflow_pg.uri, "nodeloss") if proc.poll() is None else []
            for run in runs:
                pid = int(run.data.tags.get("transinv.pid", 0))
                if progress(run)[1] >= 40 and ray_cluster.owns(1, pid):
                    return run
            return None

        lost = wait_for(on_worker, timeout=180, every=0.5)
        ray_cluster.kill_node(1)
        out, _ = proc.communicate(timeout=420)
    finally:
        stop_group(proc, grace_s=2.0)
        ray_cluster.start_node(1)  # the next test gets its two nodes back
    assert proc.returncode == 0, out
    assert "2 of 2 trials finished, 0 errored" in out, out
    runs = {r.info.run_id: r for r in trial_runs(mlflow_pg.uri, "nodeloss")}
    assert len(runs) == 2 and {r.info.status for r in runs.values()} == {"FINISHED"}
    resumed = runs[lost.info.run_id]  # the same run, continued
    assert resumed.data.tags["ray.node_id"] != lost.data.tags["ray.node_id"]
    # Resumed from its checkpoint in the shared storage, not started over: Tune saw its
    # pretraining step 0 once.
    trial_id = lost.data.tags["ray.trial_id"]
    results = tune_results(storage, "nodeloss", trial_id)
    starts = [r for r in results if r["phase"] == "pretrain" and r["pretrain/step"] == 0]
    assert len(results) > 0 and len(starts) == 1, [r["pretrain/step"] for r in results]
    points = assert_one_point_per_step(mlflow_pg.uri, "nodeloss", schedule(300, 60, 20))
    print(f"worker node lost at {progress(lost)}: resumed on the head, {points} points, 0 lost")
