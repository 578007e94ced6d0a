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

    .venv/bin/pytest tests/test_cluster.py -q        # ~2 min on 2 cores
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from study.connect import CHECK_TIMEOUT_S, ClusterError, check_cluster
from study.server import free_port
from transinv.tracking import TrackingError, check_reachable

PROJECT = Path(__file__).resolve().parents[1]
COMPOSE = PROJECT / "docker-compose.yml"
RAY = Path(sys.executable).with_name("ray")
COMPOSE_SECRETS = {"RAY_AUTH_TOKEN": "test-token", "POSTGRES_PASSWORD": "test"}

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
        pytest.fail(
            "docker-compose is not installed: `bash scripts/test-packages.sh` installs it"
        )
    return subprocess.run(
        [exe, "-f", str(COMPOSE), *args],
        cwd=PROJECT,
        env={**os.environ, **(env or COMPOSE_SECRETS)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def compose_service(name: str) -> dict:
    """A service of docker-compose.yml as written (YAML anchors and merge keys resolved)."""
    return yaml.safe_load(COMPOSE.read_text())["services"][name]


def allowed_hosts() -> str:
    command = compose_service("mlflow")["command"]
    return command[command.index("--allowed-hosts") + 1]


def test_compose_file_validates_offline():
    assert "name" not in yaml.safe_load(COMPOSE.read_text())  # compose 1.29.2 rejects it
    for profile in ([], ["--profile", "s3"]):
        done = docker_compose(*profile, "config", "-q")
        assert done.returncode == 0, done.stderr
    missing = docker_compose(
        "config", "-q", env={"POSTGRES_PASSWORD": "test", "RAY_AUTH_TOKEN": ""}
    )
    assert missing.returncode != 0 and "set it in .env" in missing.stderr

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
        assert "results:/results:rw" in node["volumes"]
        assert any(v.endswith(":/data:ro") for v in node["volumes"])  # datasets, read-only
        assert node["environment"]["TRANSINV_DATA"] == "/data"
        assert node["shm_size"] in ("2gb", 2 * 2**30, "2147483648")
    mlflow = services["mlflow"]
    assert mlflow["environment"]["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert "postgresql+psycopg2://mlflow:test@postgres:5432/mlflow" in mlflow["command"]
    assert services["s3"]["profiles"] == ["s3"] and "minio" not in services["s3"]["image"]


# -- the same topology on loopback ---------------------------------------------------------------


def _group_alive(pgid: int) -> bool:
    """Whether a process of group `pgid` still runs (zombies left to init do not count)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def stop_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM to the process group the fixture started, SIGKILL to what is left after a grace
    period."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and _group_alive(proc.pid):
            time.sleep(0.2)
        if not _group_alive(proc.pid):
            break
    if proc.poll() is None:
        proc.wait(timeout=5)


def _pg_tool(name: str) -> str:
    found = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
        key=lambda p: int(Path(p).parts[4]) if Path(p).parts[4].isdigit() else 0,
    )
    if not found:
        pytest.fail("PostgreSQL is not installed: `bash scripts/test-packages.sh` installs it")
    return found[-1]


@dataclass(frozen=True)
class Postgres:
    port: int

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/mlflow"

    @property
    def uri(self) -> str:
        """For MLflow (SQLAlchemy), naming the driver: SQLAlchemy 2.1's default for
        postgresql:// is psycopg 3, which neither this project nor the compose image installs."""
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/mlflow"

    def query(self, sql: str) -> list[tuple]:
        import psycopg2

        with psycopg2.connect(self.dsn) as conn, conn.cursor() as cursor:
            cursor.execute(sql)
            rows = cursor.fetchall()
        conn.close()
        return rows


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    """A PostgreSQL server of Debian's package, in its own temporary directory."""
    import psycopg2

    initdb, pg_ctl = _pg_tool("initdb"), _pg_tool("pg_ctl")
    root = Path(tempfile.mkdtemp(prefix="transinv-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", free_port()

    def pg(*args: str) -> None:
        done = subprocess.run([*as_user, *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr

    pg(initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    pg(pg_ctl, "-D", str(data), "-l", str(root / "server.log"), "-o", options, "-w", "start")
    try:
        conn = psycopg2.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres")
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute("CREATE DATABASE mlflow")
        conn.close()
        yield Postgres(port)
    finally:
        subprocess.run(
            [*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(root, ignore_errors=True)


@dataclass(frozen=True)
class Server:
    uri: str
    artifacts: Path


@pytest.fixture(scope="module")
def mlflow_pg(postgres, tmp_path_factory) -> Iterator[Server]:
    """`mlflow server` as in docker-compose.yml: PostgreSQL backend, proxied artifacts, the
    compose file's --allowed-hosts, job execution off."""
    root = tmp_path_factory.mktemp("mlflow-pg")
    port = free_port()
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", postgres.uri,
        "--serve-artifacts", "--artifacts-destination", str(root / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--allowed-hosts", allowed_hosts(),
    ]  # fmt: skip
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(root / "server.log", "wb") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:  # the first start creates MLflow's tables in PostgreSQL
            assert proc.poll() is None, (root / "server.log").read_text()[-3000:]
            try:
                check_reachable(uri, timeout_s=2.0)
                break
            except TrackingError:
                assert time.monotonic() < deadline, (root / "server.log").read_text()[-3000:]
        yield Server(uri, root / "artifacts")
    finally:
        stop_group(proc)


@dataclass(frozen=True)
class Cluster:
    address: str
    env: dict[str, str]


def start_ray_node(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """`ray start ... --block` in its own process group; returns once the node is up."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(RAY), "start", *args, "--block"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    deadline = time.monotonic() + 60
    while "Ray runtime started" not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_group(proc)
            pytest.fail(f"ray start {' '.join(args)} failed:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    return proc


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Cluster]:
    """A Ray head and one worker node, one CPU each, token auth with a fresh token."""
    # Short and our own: Ray's socket paths live in it (107-character limit), and so does the
    # ray_current_cluster file, which must not redirect other Ray users on this machine.
    root = Path(tempfile.mkdtemp(prefix="ti-ray-"))
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    env.pop("RAY_ADDRESS", None)
    port = free_port()
    common = ["--num-cpus=1", f"--object-store-memory={256 * 2**20}"]
    nodes = []
    try:
        nodes.append(
            start_ray_node(
                [
                    "--head",
                    f"--port={port}",
                    "--include-dashboard=false",
                    f"--temp-dir={root}/head",
                    *common,
                ],
                env,
                root / "head.log",
            )
        )
        nodes.append(
            start_ray_node(
                [f"--address=127.0.0.1:{port}", f"--temp-dir={root}/worker", *common],
                env,
                root / "worker.log",
            )
        )
        yield Cluster(f"127.0.0.1:{port}", env)
    finally:
        for node in reversed(nodes):
            stop_group(node)
        shutil.rmtree(root, ignore_errors=True)


def run_study(
    cluster: Cluster,
    uri: str,
    space: Path,
    storage: Path,
    home: Path,
    address: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 240,
) -> tuple[int, str, float]:
    """`python -m study run` against the cluster, in its own process group; (code, output,
    seconds)."""
    cmd = [
        sys.executable,
        "-m",
        "study",
        "run",
        str(space),
        "--address",
        address or cluster.address,
        "--tracking-uri",
        uri,
        "--storage",
        str(storage),
    ]
    started = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**(env or cluster.env), "TRANSINV_HOME": str(home)},
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        stop_group(proc, grace_s=2.0)
    return proc.returncode, out, time.monotonic() - started


def trial_runs(uri: str, study: str) -> list:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(study)
    return client.search_runs([exp.experiment_id], "tags.`transinv.role` = 'trial'")


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
    done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr

    def status(host: str) -> int:
        request = urllib.request.Request(
            f"{mlflow_pg.uri}/api/2.0/mlflow/experiments/search?max_results=1",
            headers={"Host": host},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code

    assert {h: status(h) for h in ("mlflow:5000", "localhost:5000", "evil.example:5000")} == {
        "mlflow:5000": 200,
        "localhost:5000": 200,
        "evil.example:5000": 403,
    }


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


def test_relative_storage_is_refused_before_connecting():
    with pytest.raises(ClusterError, match="absolute path"):
        check_cluster(f"127.0.0.1:{free_port()}", "results", None)
