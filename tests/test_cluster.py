"""The topology of docker-compose.yml: the file validated offline, and the same stack run as real
processes on loopback.

The project machines have no Docker engine, so Debian's docker-compose 1.29.2 checks the file
(`config -q` needs no engine), and the stack runs on 127.0.0.1: PostgreSQL (Debian's package,
initialised in a temporary directory) as MLflow's backend store, an MLflow server with proxied
artifacts and the compose file's --allowed-hosts, a Ray head plus one worker node with token
authentication, and a study launched against the head with the real CLI. Fixtures start and
stop only their own processes, by process group (never `ray stop`, which stops every Ray of the
user). `scripts/test-packages.sh` (the README's test command) installs docker-compose and
PostgreSQL where they are missing.

    .venv/bin/pytest tests/test_cluster.py -q        # ~4.5 min on 2 cores
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest
import yaml
from cluster_fixtures import (
    ADMIN,
    COMPOSE,
    CREDENTIALS,
    PROJECT,
    basic_auth,
    compose_service,
    postgres_setting,
    run_study,
    running_mlflow,
    running_postgres,
    running_ray_cluster,
    trial_runs,
)

from study.connect import CHECK_TIMEOUT_S, ClusterError, check_cluster
from study.server import free_port

pytestmark = pytest.mark.slow(minutes=3)

COMPOSE_SECRETS = {
    "RAY_AUTH_TOKEN": "test-token",
    "POSTGRES_PASSWORD": "test",
    "MLFLOW_TRACKING_PASSWORD": "test-admin",
    "MLFLOW_SECRET_KEY": "test-key",
}

SPACE = """\
# test study on the loopback cluster
study: {name}
objective: {{metric: finetune/acc_untrained, mode: max}}
search: {{sampler: tpe, seed: 0}}
samples: 4
max_concurrent: 2
resources: {{cpu: 1, gpu: 0}}
fixed:
  model.arch: tiny_cnn
  canvas.size: 32
  canvas.item_size: 8
  pretrain.steps: 20
  finetune.steps: 20
  optim.batch_size: 16
  eval.every: 10
  eval.items: 16
  eval.pretrain_items: 32
  eval.grid_step: 0.25
  run.threads: 1
space:
  optim.lr: {{loguniform: [0.001, 0.01]}}
"""


# -- the compose file ----------------------------------------------------------------------------


def docker_compose(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.fail("docker-compose is not installed: `bash scripts/test-packages.sh` installs it")
    return subprocess.run(
        [exe, "-f", str(COMPOSE), *args],
        cwd=PROJECT,
        env={**os.environ, **(env or COMPOSE_SECRETS)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_compose_file_validates_offline():
    assert "name" not in yaml.safe_load(COMPOSE.read_text())  # compose 1.29.2 rejects it
    for profile in ([], ["--profile", "s3"]):
        done = docker_compose(*profile, "config", "-q")
        assert done.returncode == 0, done.stderr
    for secret in COMPOSE_SECRETS:
        missing = docker_compose("config", "-q", env={**COMPOSE_SECRETS, secret: ""})
        assert missing.returncode != 0 and "set it in .env" in missing.stderr, secret

    done = docker_compose("--profile", "s3", "config")
    assert done.returncode == 0, done.stderr
    services = yaml.safe_load(done.stdout)["services"]
    assert {"postgres", "mlflow", "ray-head", "ray-worker", "s3"} <= set(services)
    for name, service in services.items():
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: pin {image}"
        for port in service.get("ports", []):  # published on loopback only
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port}"
    assert {p.split(":")[1] for s in services.values() for p in s.get("ports", [])} == {
        "5000",
        "8265",
    }
    worker, head = services["ray-worker"], services["ray-head"]
    assert "container_name" not in worker and "ports" not in worker  # --scale ray-worker=N
    for node in (head, worker):
        assert node["environment"]["RAY_AUTH_MODE"] == "token"
        assert node["environment"]["RAY_AUTH_TOKEN"] == "test-token"
        assert node["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        assert node["environment"]["MLFLOW_TRACKING_USERNAME"] == "admin"
        assert node["environment"]["MLFLOW_TRACKING_PASSWORD"] == "test-admin"
        assert "results:/results:rw" in node["volumes"]
        assert any(v.endswith(":/data:ro") for v in node["volumes"])  # datasets, read-only
        assert node["environment"]["TRANSINV_DATA"] == "/data"
        assert node["shm_size"] in ("2gb", 2 * 2**30, "2147483648")
    mlflow = services["mlflow"]
    assert mlflow["environment"]["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    command = mlflow["command"]
    assert command[command.index("--app-name") + 1] == "basic-auth"
    assert mlflow["environment"]["MLFLOW_AUTH_ADMIN_USERNAME"] == "admin"
    assert mlflow["environment"]["MLFLOW_AUTH_ADMIN_PASSWORD"] == "test-admin"
    assert mlflow["environment"]["MLFLOW_AUTH_CONFIG_PATH"] == "/etc/mlflow/basic_auth.ini"
    assert "mlflow-auth:/mlflow-auth:rw" in mlflow["volumes"]
    assert "postgresql+psycopg2://mlflow:test@postgres:5432/mlflow" in mlflow["command"]
    assert services["s3"]["profiles"] == ["s3"] and "minio" not in services["s3"]["image"]


# -- the same topology on loopback ---------------------------------------------------------------


@pytest.fixture(scope="module")
def postgres():
    with running_postgres(int(postgres_setting("max_connections"))) as pg:
        yield pg


@pytest.fixture(scope="module")
def mlflow_pg(postgres, tmp_path_factory):
    """`mlflow server` as in docker-compose.yml (basic auth, pool settings, allowed hosts,
    proxied artifacts); this test process authenticates as the admin while it runs."""
    with running_mlflow(postgres, tmp_path_factory.mktemp("mlflow-pg")) as server:
        yield server


@pytest.fixture(scope="module")
def ray_cluster():
    """A Ray head and one worker node, one CPU each, token auth, MLflow credentials in their
    environment as the compose file gives them."""
    with running_ray_cluster(workers=1, env=CREDENTIALS) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def cluster_study(ray_cluster, mlflow_pg, tmp_path_factory):
    """The 4-trial study run once against the loopback cluster: (space, storage, home, output)."""
    tmp = tmp_path_factory.mktemp("cluster-study")
    space = tmp / "cluster.yaml"
    space.write_text(SPACE.format(name="cluster"))
    code, out, seconds = run_study(ray_cluster, mlflow_pg.uri, space, tmp / "results", tmp / "home")
    assert code == 0, out
    print(f"study on the loopback cluster: {seconds:.1f} s")
    return space, tmp / "results", tmp / "home", out


def test_mlflow_admits_the_compose_host_names_only(mlflow_pg):
    port = mlflow_pg.uri.rsplit(":", 1)[1]
    # The compose file's healthcheck, pointed at this server: a real API call with Host mlflow.
    test = compose_service("mlflow")["healthcheck"]["test"]
    assert test[:2] == ["CMD", "python"]
    command = [
        sys.executable,
        *[a.replace("localhost:5000", f"127.0.0.1:{port}") for a in test[2:]],
    ]
    admin = {"MLFLOW_AUTH_ADMIN_USERNAME": ADMIN[0], "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN[1]}
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=30, env={**os.environ, **admin}
    )
    assert done.returncode == 0, done.stderr

    def status(host: str) -> int:
        return mlflow_pg.status(
            "/api/2.0/mlflow/experiments/search?max_results=1",
            {"Host": host, "Authorization": basic_auth(*ADMIN)},
        )

    assert {h: status(h) for h in ("mlflow:5000", "localhost:5000", "evil.example:5000")} == {
        "mlflow:5000": 200,
        "localhost:5000": 200,
        "evil.example:5000": 403,
    }


def test_mlflow_refuses_requests_without_the_env_credentials(mlflow_pg):
    api = "/api/2.0/mlflow/experiments/search?max_results=1"
    host = {"Host": "mlflow:5000"}
    assert mlflow_pg.status(api, host) == 401
    assert mlflow_pg.status(api, {**host, "Authorization": basic_auth(ADMIN[0], "wrong")}) == 401
    assert mlflow_pg.status(api, {**host, "Authorization": basic_auth(*ADMIN)}) == 200
    # Artifacts are proxied through the same server, behind the same check.
    assert mlflow_pg.status("/api/2.0/mlflow-artifacts/artifacts", host) == 401
    assert mlflow_pg.status("/health") == 200  # liveness only, no data


def test_study_runs_on_both_nodes_and_lands_in_postgres(cluster_study, mlflow_pg, postgres):
    *_, out = cluster_study
    assert "2 nodes, 2 CPUs; storage" in out and "MLflow reachable from every node" in out, out
    assert "4 of 4 trials finished, 0 errored" in out, out
    runs = trial_runs(mlflow_pg.uri, "cluster")
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
    assert len({r.data.tags["ray.node_id"] for r in runs}) == 2  # the head and the worker

    # The backend rows are in PostgreSQL: 4 trial runs and the study's parent run.
    rows = dict(postgres.query("SELECT status, count(*) FROM runs GROUP BY status"))
    assert rows == {"FINISHED": 5}
    uris = [u for (u,) in postgres.query("SELECT artifact_uri FROM runs")]
    assert all(u.startswith("mlflow-artifacts:/") for u in uris), uris
    # The artifacts, uploaded by trials on both nodes through the server, are in its destination.
    for run in runs:
        stored = mlflow_pg.artifacts / run.info.experiment_id / run.info.run_id / "artifacts"
        assert {"forgetting.png", "final_grid.json"} <= {p.name for p in stored.iterdir()}


def test_relaunch_against_the_cluster_redoes_nothing(
    cluster_study, ray_cluster, mlflow_pg, postgres
):
    space, storage, home, _ = cluster_study

    def snapshot():  # repr: NaN metrics compare equal
        return {
            r.info.run_id: repr(sorted(r.data.metrics.items()))
            for r in trial_runs(mlflow_pg.uri, "cluster")
        }

    before = snapshot()
    code, out, seconds = run_study(ray_cluster, mlflow_pg.uri, space, storage, home)
    assert code == 0, out
    assert "4 of 4 trials finished" in out
    assert snapshot() == before
    assert postgres.query("SELECT count(*) FROM runs") == [(5,)]
    print(f"relaunch: {seconds:.1f} s")


# -- clear errors within 30 s --------------------------------------------------------------------


def _without(env: dict[str, str], *names: str) -> dict[str, str]:
    return {k: v for k, v in env.items() if k not in names}


@pytest.mark.parametrize(
    "case, expected",
    [
        ("wrong address", "does not answer"),
        ("wrong token", "RAY_AUTH_TOKEN"),
        ("no auth mode", "RAY_AUTH_MODE is unset"),
        ("mlflow down", "unreachable"),
        ("no mlflow credentials", "MLFLOW_TRACKING_USERNAME"),
    ],
)
def test_misconfigured_cluster_fails_fast_naming_the_fix(
    case, expected, ray_cluster, mlflow_pg, tmp_path
):
    space = tmp_path / "misconfigured.yaml"
    space.write_text(SPACE.format(name="misconfigured"))
    address, uri, env = ray_cluster.address, mlflow_pg.uri, ray_cluster.env
    if case == "wrong address":
        address = f"127.0.0.1:{free_port()}"
    elif case == "wrong token":
        env = {**env, "RAY_AUTH_TOKEN": "wrong"}
    elif case == "no auth mode":
        env = _without(env, "RAY_AUTH_MODE", "RAY_AUTH_TOKEN")
    elif case == "no mlflow credentials":
        env = _without(env, *CREDENTIALS)
    else:
        uri = f"http://127.0.0.1:{free_port()}"
    code, out, seconds = run_study(
        ray_cluster,
        uri,
        space,
        tmp_path / "results",
        tmp_path / "home",
        address=address,
        env=env,
        timeout=60,
    )
    assert code != 0 and expected in out, out
    assert "Traceback" not in out, out
    assert seconds < 30, f"{case}: {seconds:.1f} s"
    print(f"{case}: {seconds:.1f} s\n{out}")


def test_mlflow_unreachable_from_the_nodes_is_named_per_node(ray_cluster, tmp_path, monkeypatch):
    """The driver may reach a server the nodes cannot (e.g. localhost on the driver's machine):
    the per-node check names each node."""
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN"):
        monkeypatch.setenv(name, ray_cluster.env[name])
    started = time.monotonic()
    with pytest.raises(ClusterError) as error:
        check_cluster(ray_cluster.address, str(tmp_path), f"http://127.0.0.1:{free_port()}")
    seconds = time.monotonic() - started
    message = str(error.value)
    assert message.count("cannot reach MLflow") == 2 and "--tracking-uri" in message, message
    assert "storage" not in message.split("cannot reach")[0]  # the storage check passed
    assert seconds < CHECK_TIMEOUT_S
    assert not list(tmp_path.glob(".transinv-shared-check-*"))  # the marker is cleaned up
    print(f"MLflow unreachable from the nodes: {seconds:.1f} s")


def test_a_node_without_mlflow_credentials_is_named_with_the_variables(mlflow_pg, monkeypatch):
    """What each node runs in the pre-launch check, in a node's environment without them."""
    from study.connect import _problems, check_node

    for name in CREDENTIALS:
        monkeypatch.delenv(name)
    node = {"address": "10.0.0.7", "id": "abcd1234", "cpus": 1.0}
    (problem,) = _problems([{**node, **check_node("", "", mlflow_pg.uri)}], "", mlflow_pg.uri)
    assert "401" in problem and "MLFLOW_TRACKING_USERNAME" in problem, problem
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    assert _problems([{**node, **check_node("", "", mlflow_pg.uri)}], "", mlflow_pg.uri) == []


def test_relative_storage_is_refused_before_connecting():
    with pytest.raises(ClusterError, match="absolute path"):
        check_cluster(f"127.0.0.1:{free_port()}", "results", None)
