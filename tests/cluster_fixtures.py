"""The processes of docker-compose.yml's topology on loopback, for tests/test_cluster.py and
tests/test_cluster_faults.py: PostgreSQL (Debian's package, in a temporary directory), the MLflow
server as the compose file starts it (basic-auth app, pool settings, allowed hosts, proxied
artifacts), a Ray head plus worker nodes with token authentication, and a study launched with the
real CLI.

Each test module builds its own stack from these context managers (module-scoped fixtures), so
a fault injected in one module cannot leak into another. Everything here starts and stops only
its own processes, by process group (never `ray stop`, which stops every Ray of the user), and
can be stopped and started again on the same port and store to inject an outage.
"""

from __future__ import annotations

import base64
import configparser
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
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from study.server import free_port
from transinv.tracking import TrackingError, check_reachable

PROJECT = Path(__file__).resolve().parents[1]
COMPOSE = PROJECT / "docker-compose.yml"
AUTH_INI = PROJECT / "docker" / "basic_auth.ini"
RAY = Path(sys.executable).with_name("ray")
ADMIN = ("admin", "test-admin-password")
"""The MLflow admin account of the loopback stacks (compose: from .env)."""
CREDENTIALS = {"MLFLOW_TRACKING_USERNAME": ADMIN[0], "MLFLOW_TRACKING_PASSWORD": ADMIN[1]}
"""What trials, the CLI and `MlflowClient` read to authenticate."""


# -- the compose file ----------------------------------------------------------------------------


def compose_service(name: str) -> dict:
    """A service of docker-compose.yml as written (YAML anchors and merge keys resolved)."""
    return yaml.safe_load(COMPOSE.read_text())["services"][name]


def mlflow_option(name: str) -> str:
    """The value of an option of the compose file's `mlflow server` command."""
    command = compose_service("mlflow")["command"]
    return command[command.index(name) + 1]


def mlflow_pool_env() -> dict[str, str]:
    """The compose server's MLFLOW_SQLALCHEMYSTORE_* settings (its database pool)."""
    env = compose_service("mlflow")["environment"]
    return {k: str(v) for k, v in env.items() if k.startswith("MLFLOW_SQLALCHEMYSTORE_")}


def postgres_setting(name: str) -> str:
    """A `-c name=value` setting of the compose file's PostgreSQL command."""
    command = compose_service("postgres")["command"]
    values = dict(a.split("=", 1) for a in command if "=" in a)
    return values[name]


# -- processes -----------------------------------------------------------------------------------


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


def stop_group(proc: subprocess.Popen, grace_s: float = 10.0, first=signal.SIGTERM) -> None:
    """`first` (SIGTERM) to the process group the fixture started, SIGKILL to what is left after
    a grace period."""
    for sig in (first, signal.SIGKILL):
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


# -- PostgreSQL ----------------------------------------------------------------------------------


@dataclass
class Postgres:
    port: int
    root: Path
    max_connections: int
    as_user: list[str]

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/mlflow"

    @property
    def uri(self) -> str:
        """For MLflow (SQLAlchemy), naming the driver: SQLAlchemy 2.1's default for
        postgresql:// is psycopg 3, which neither this project nor the compose image installs."""
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/mlflow"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    def query(self, sql: str) -> list[tuple]:
        import psycopg2

        with psycopg2.connect(self.dsn) as conn, conn.cursor() as cursor:
            cursor.execute(sql)
            rows = cursor.fetchall()
        conn.close()
        return rows

    def _ctl(self, *args: str) -> None:
        done = subprocess.run(
            [*self.as_user, _pg_tool("pg_ctl"), "-D", str(self.root / "data"), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stdout + done.stderr

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
            f"-c max_connections={self.max_connections}"
        )
        self._ctl("-l", str(self.log), "-o", options, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        """`fast` closes every client connection, as a restart of the compose service does."""
        self._ctl("-m", mode, "-w", "stop")


@contextmanager
def running_postgres(max_connections: int = 100) -> Iterator[Postgres]:
    """A PostgreSQL server of Debian's package in its own temporary directory, with an empty
    `mlflow` database."""
    import psycopg2

    root = Path(tempfile.mkdtemp(prefix="transinv-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    done = subprocess.run(
        [*as_user, _pg_tool("initdb"), "-D", str(root / "data"), "-U", "postgres"]
        + ["--auth=trust", "-E", "UTF8", "--no-sync"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    pg = Postgres(free_port(), root, max_connections, as_user)
    pg.start()
    try:
        conn = psycopg2.connect(f"postgresql://postgres@127.0.0.1:{pg.port}/postgres")
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute("CREATE DATABASE mlflow")
        conn.close()
        yield pg
    finally:
        subprocess.run(
            [*as_user, _pg_tool("pg_ctl"), "-D", str(root / "data"), "-m", "immediate", "stop"],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(root, ignore_errors=True)


# -- MLflow --------------------------------------------------------------------------------------


def basic_auth(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


@dataclass
class MlflowServer:
    """`mlflow server` as docker-compose.yml runs it, on 127.0.0.1; `stop` and `start` keep the
    port and the stores."""

    uri: str
    artifacts: Path
    cmd: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 120.0) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        while True:  # the first start creates MLflow's tables in PostgreSQL
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                check_reachable(self.uri, timeout_s=2.0)
                return
            except TrackingError:
                assert time.monotonic() < deadline, self.log.read_text()[-3000:]
                time.sleep(0.5)  # a refused connection fails at once

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc)

    def status(self, path: str, headers: dict[str, str] | None = None) -> int:
        """The HTTP status of a GET on the server."""
        request = urllib.request.Request(f"{self.uri}{path}", headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code


@contextmanager
def running_mlflow(postgres: Postgres, root: Path, workers: int = 1) -> Iterator[MlflowServer]:
    """The compose file's `mlflow server` against `postgres`: its basic-auth app (admin account
    ADMIN, the compose auth config with the user store moved into `root`), its database pool
    settings, its --allowed-hosts, proxied artifacts and job execution off. Clients need
    CREDENTIALS in their environment."""
    root.mkdir(parents=True, exist_ok=True)
    auth = configparser.ConfigParser()
    auth.read(AUTH_INI)
    auth["mlflow"]["database_uri"] = f"sqlite:///{root / 'basic_auth.db'}"
    with open(root / "basic_auth.ini", "w") as out:
        auth.write(out)
    port = free_port()
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--app-name", mlflow_option("--app-name"),
        "--backend-store-uri", postgres.uri,
        "--serve-artifacts", "--artifacts-destination", str(root / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
        "--allowed-hosts", mlflow_option("--allowed-hosts"),
    ]  # fmt: skip
    env = {
        **os.environ,
        **mlflow_pool_env(),
        **CREDENTIALS,  # the server's own readiness check authenticates like every client
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_AUTH_CONFIG_PATH": str(root / "basic_auth.ini"),
        "MLFLOW_AUTH_ADMIN_USERNAME": ADMIN[0],
        "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN[1],
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
    }
    server = MlflowServer(f"http://127.0.0.1:{port}", root / "artifacts", cmd, env, root / "log")
    # This process is a client too (MlflowClient, check_reachable): it authenticates while the
    # server runs.
    with pytest.MonkeyPatch.context() as patch:
        for name, value in CREDENTIALS.items():
            patch.setenv(name, value)
        try:
            server.start()
            yield server
        finally:
            server.stop()


# -- Ray -----------------------------------------------------------------------------------------


@dataclass
class Cluster:
    address: str
    env: dict[str, str]
    root: Path
    nodes: list[subprocess.Popen] = field(default_factory=list)
    """The head first, then the workers: one `ray start --block` process group each."""
    args: list[list[str]] = field(default_factory=list)
    """The `ray start` arguments of each node."""

    def start_node(self, index: int) -> None:
        """(Re)start node `index` with its arguments (a fresh raylet: a new node id)."""
        log = self.root / f"node{index}.log"
        proc = start_ray_node(self.args[index], self.env, log)
        if index < len(self.nodes):
            self.nodes[index] = proc
        else:
            self.nodes.append(proc)

    def kill_node(self, index: int) -> None:
        """SIGKILL to the node's process group: its raylet and the workers it started die at
        once, as when a machine is lost."""
        stop_group(self.nodes[index], first=signal.SIGKILL)

    def owns(self, index: int, pid: int) -> bool:
        """Whether process `pid` was started by node `index` (its `ray start` is an ancestor)."""
        top = self.nodes[index].pid
        while pid > 1:
            if pid == top:
                return True
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                return False
            pid = int(stat.rpartition(")")[2].split()[1])
        return False


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


@contextmanager
def running_ray_cluster(
    workers: int = 1, cpus: int = 1, env: dict[str, str] | None = None
) -> Iterator[Cluster]:
    """A Ray head and `workers` worker nodes, `cpus` logical CPUs each (resources only
    schedule), token auth with a fresh token; every node has `env` (e.g. MLflow credentials)."""
    # Short and our own: Ray's socket paths live in it (107-character limit), and so does the
    # ray_current_cluster file, which must not redirect other Ray users on this machine.
    root = Path(tempfile.mkdtemp(prefix="ti-ray-"))
    node_env = {
        **os.environ,
        **(env or {}),
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    node_env.pop("RAY_ADDRESS", None)
    port = free_port()
    common = [f"--num-cpus={cpus}", f"--object-store-memory={256 * 2**20}"]
    cluster = Cluster(f"127.0.0.1:{port}", node_env, root)
    head = ["--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={root}/head"]
    cluster.args.append([*head, *common])
    for i in range(workers):
        cluster.args.append([f"--address={cluster.address}", f"--temp-dir={root}/w{i}", *common])
    try:
        for i in range(len(cluster.args)):
            cluster.start_node(i)
        yield cluster
    finally:
        for node in reversed(cluster.nodes):
            stop_group(node)
        shutil.rmtree(root, ignore_errors=True)


# -- studies -------------------------------------------------------------------------------------


def study_command(cluster: Cluster, uri: str, space: Path, storage: Path, address: str = ""):
    return [
        sys.executable, "-m", "study", "run", str(space),
        "--address", address or cluster.address,
        "--tracking-uri", uri,
        "--storage", str(storage),
    ]  # fmt: skip


def start_study(
    cluster: Cluster, uri: str, space: Path, storage: Path, home: Path, **kwargs
) -> subprocess.Popen:
    """`python -m study run` against the cluster in its own process group, output piped; the
    driver has the cluster's environment (token, MLflow credentials) unless `env` is given."""
    env = kwargs.pop("env", None) or cluster.env
    return subprocess.Popen(
        study_command(cluster, uri, space, storage, **kwargs),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**env, "TRANSINV_HOME": str(home)},
        start_new_session=True,
    )


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
    """`python -m study run` against the cluster to its end; (code, output, seconds)."""
    started = time.monotonic()
    proc = start_study(cluster, uri, space, storage, home, address=address or "", env=env)
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        stop_group(proc, grace_s=2.0)
    return proc.returncode, out, time.monotonic() - started


def assert_one_point_per_step(uri: str, study: str, schedule: dict[str, list[int]]) -> int:
    """MLflow's own history (not `results.curves`, which dedupes) holds exactly one point per
    (run, key, step) for every key of every trial run, and each key of `schedule` has exactly its
    evaluation steps; returns the number of points checked."""
    mlflow, points = MlflowClient(uri), 0
    for run in trial_runs(uri, study):
        for key in run.data.metrics:
            steps = [m.step for m in mlflow.get_metric_history(run.info.run_id, key)]
            points += len(steps)
            assert len(steps) == len(set(steps)), (run.info.run_name, key, sorted(steps))
            if key in schedule:
                assert sorted(steps) == schedule[key], (run.info.run_name, key, sorted(steps))
        assert set(schedule) <= set(run.data.metrics), run.info.run_name
    return points


def progress(run) -> tuple[str, int]:
    """(phase, step) of a trial run's latest evaluation, from its progress tag."""
    phase, _, step = run.data.tags.get("transinv.progress", " -1").partition(" ")
    return phase, int(step)


def trial_runs(uri: str, study: str) -> list:
    mlflow = MlflowClient(uri)
    exp = mlflow.get_experiment_by_name(study)
    if exp is None:  # the driver has not created it yet
        return []
    return mlflow.search_runs([exp.experiment_id], "tags.`transinv.role` = 'trial'")
