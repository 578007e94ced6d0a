"""Checks that an existing Ray cluster can run a study, made before the study starts.

`python -m study run SPACE --address HEAD:PORT --storage PATH` calls `check_cluster` first
(~3-8 s when all is well, never more than 30 s). Each check names what is missing and how to
fix it, instead of hanging:

1. the head's GCS port answers (a TCP connection, 5 s at most);
2. a driver can connect: `ray.init(address=...)` runs in a child process, killed when time is
   up, because with mismatched token authentication it retries for ~20 s and then fails with a
   bare `ConnectionError` (or, the other way round, never returns);
3. on every alive node, a zero-CPU task pinned to the node reads a marker file this driver wrote
   into the storage path (Tune does not copy trial directories between nodes: the path must be
   one volume mounted at the same place everywhere, or a URI such as s3://) and can write there;
4. the same task calls the MLflow server with the tracking URI the trials will use, with the
   credentials the node's environment gives the trials (MLFLOW_TRACKING_USERNAME/PASSWORD).

The tasks import this module on the nodes, so they also show whether this project is installed
there. Connecting for the study itself (`ray.init`) is the CLI's job (`cli.connect_ray`).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from transinv.config import ConfigError

CHECK_TIMEOUT_S = 30.0
PROBE_TIMEOUT_S = 5.0
MLFLOW_TIMEOUT_S = 5.0
RESULT = "transinv-cluster-check: "
AUTH_SIGNS = ("InvalidAuthToken", "Unauthenticated", "AuthenticationError")


class ClusterError(ConfigError):
    """The cluster cannot run the study: the message names the missing piece and the fix."""


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of `host:port` or `ray://host:port`; None for `auto` and other forms."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]") or "127.0.0.1", int(port)


def probe_gcs(address: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Raise ClusterError unless the address accepts a TCP connection within `timeout_s`."""
    target = _host_port(address)
    if target is None:
        return  # `auto`: Ray finds the address itself, and the connection check covers it
    try:
        with socket.create_connection(target, timeout=timeout_s):
            return
    except OSError as exc:
        raise ClusterError(
            f"Ray at {address} does not answer ({exc}). Start the head with "
            "`ray start --head --port=6379` (or `docker-compose up`), check the host and port "
            "given to --address / RAY_ADDRESS, or omit both to run on a local Ray"
        ) from exc


def _auth_hint() -> str:
    mode = os.environ.get("RAY_AUTH_MODE")
    here = (
        "RAY_AUTH_MODE is unset here (so token authentication is off for this driver)"
        if not mode
        else f"RAY_AUTH_MODE={mode} here"
    )
    token = "RAY_AUTH_TOKEN is set" if os.environ.get("RAY_AUTH_TOKEN") else "RAY_AUTH_TOKEN unset"
    return (
        f"{here}, {token}. Every node and every driver needs the same RAY_AUTH_MODE (token or "
        "disabled) and, with token, the same RAY_AUTH_TOKEN: export RAY_AUTH_MODE=token and "
        "RAY_AUTH_TOKEN=<the cluster's token> (the value in the cluster's .env, or "
        "`ray get-auth-token` on the head)"
    )


def _write_marker(storage: str) -> tuple[Path, str]:
    """A fresh marker file in the storage path; (path, its text)."""
    root = Path(storage)
    text = f"{socket.gethostname()} {os.getpid()} {uuid.uuid4().hex}"
    marker = root / f".transinv-shared-check-{uuid.uuid4().hex[:12]}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        marker.write_text(text)
    except OSError as exc:
        raise ClusterError(f"cannot write to --storage {storage} on this machine: {exc}") from exc
    return marker, text


def check_node(marker: str, text: str, tracking_uri: str) -> dict[str, str]:
    """Run on one node: what it sees of the storage path and the MLflow server."""
    out = {"host": socket.gethostname()}
    if marker:
        try:
            seen = Path(marker).read_text()
        except OSError:
            seen = None
        if seen != text:
            out["storage"] = f"does not see {marker}, written by the driver"
        else:
            probe = Path(f"{marker}.{socket.gethostname()}.{os.getpid()}")
            try:
                probe.write_text("ok")
                probe.unlink()
            except OSError as exc:
                out["storage"] = f"sees {Path(marker).parent} but cannot write there ({exc})"
    if tracking_uri:
        from transinv.tracking import TrackingError, check_reachable

        try:
            check_reachable(tracking_uri, timeout_s=MLFLOW_TIMEOUT_S)
        except TrackingError as exc:
            out["mlflow"] = str(exc.__cause__ or exc)
            if "HTTP 401" in str(exc):  # the server answers, but not to this node
                out["mlflow_auth"] = "1"
    return out


def driver_check(argv: list[str]) -> int:
    """The child process: connect, run `check_node` on every alive node, print the report."""
    address, marker, text, tracking_uri, budget_s = argv
    deadline = time.monotonic() + float(budget_s)
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    ray.init(address=address, log_to_driver=False, logging_level="WARNING")
    print("connected", flush=True)
    nodes = [n for n in ray.nodes() if n["Alive"]]
    task = ray.remote(num_cpus=0, max_retries=0)(check_node)
    refs = [
        task.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
        ).remote(marker, text, tracking_uri)
        for n in nodes
    ]
    _, pending = ray.wait(
        refs, num_returns=len(refs), timeout=max(0.1, deadline - time.monotonic())
    )
    report = []
    for node, ref in zip(nodes, refs, strict=True):
        entry = {
            "address": node["NodeManagerAddress"],
            "id": node["NodeID"][:8],
            "cpus": node["Resources"].get("CPU", 0.0),
        }
        if ref in pending:
            entry["task"] = f"ran no check task within {float(budget_s):.0f} s"
        else:
            try:
                entry.update(ray.get(ref))
            except Exception as exc:  # the node could not run our code: report, don't raise
                lines = [x for x in str(exc).splitlines() if x.strip()]
                entry["task"] = f"check task failed: {lines[-1] if lines else type(exc).__name__}"
        report.append(entry)
    print(RESULT + json.dumps(report), flush=True)
    return 0


def _lines(stream, sink: queue.Queue) -> None:
    for line in stream:
        sink.put(line)
    sink.put(None)


def _run_driver_check(
    address: str, marker: str, text: str, tracking_uri: str, deadline: float
) -> list[dict]:
    """`driver_check` in a child process in its own process group, killed at `deadline`."""
    code = (
        "import sys; from study.connect import driver_check; sys.exit(driver_check(sys.argv[1:]))"
    )
    budget = max(1.0, deadline - time.monotonic() - 2.0)  # leave time to print and exit
    proc = subprocess.Popen(
        [sys.executable, "-c", code, address, marker, text, tracking_uri, f"{budget:.1f}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    sink: queue.Queue = queue.Queue()
    threading.Thread(target=_lines, args=(proc.stdout, sink), daemon=True).start()
    tail: list[str] = []
    connected, report, problem = False, None, None
    try:
        while report is None and problem is None:
            try:
                line = sink.get(timeout=max(0.05, deadline - time.monotonic()))
            except queue.Empty:
                problem = "timeout"
                break
            if line is None:
                break
            if line.startswith(RESULT):
                report = json.loads(line[len(RESULT) :])
            elif line.strip() == "connected":
                connected = True
            elif any(sign in line for sign in AUTH_SIGNS):
                problem = "auth"
            else:
                tail = (tail + [line.rstrip()])[-8:]
    finally:
        try:
            proc.wait(timeout=3.0 if report is not None else 0.0)
        except subprocess.TimeoutExpired:
            pass
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if report is not None:
        return report
    last = "\n    ".join(tail) or "(no output)"
    if problem == "auth":
        raise ClusterError(f"Ray at {address} rejected this driver's auth token. {_auth_hint()}")
    if problem == "timeout" and not connected:
        raise ClusterError(
            f"could not connect to Ray at {address} within {CHECK_TIMEOUT_S:.0f} s although its "
            "port answers. The likely cause is authentication: "
            f"{_auth_hint()}. Last output:\n    {last}"
        )
    if problem == "timeout":
        raise ClusterError(
            f"connected to Ray at {address}, but the nodes did not report back within "
            f"{CHECK_TIMEOUT_S:.0f} s. Last output:\n    {last}"
        )
    raise ClusterError(
        f"could not connect to Ray at {address} (exit code {proc.returncode}); check that the "
        f"cluster runs Ray {_ray_version()} on Python {sys.version.split()[0]} like this "
        f"driver. Last output:\n    {last}"
    )


def _ray_version() -> str:
    from importlib.metadata import version

    return version("ray")


def _problems(report: list[dict], storage: str, tracking_uri: str) -> list[str]:
    problems = []
    for node in report:
        where = f"node {node['address']} ({node.get('host', node['id'])})"
        if "task" in node:
            problems.append(
                f"{where} {node['task']}. Install this project on every node at the driver's "
                "version (`pip install .` in the node image), and give the node a moment to "
                "start its workers"
            )
        if "storage" in node:
            problems.append(
                f"{where} {node['storage']}: --storage {storage} is not one shared volume. "
                "Mount the same volume at that path on every node and on the driver's machine "
                "(docker-compose: the `results` volume at /results), or pass a URI such as "
                "--storage s3://bucket/studies"
            )
        if "mlflow_auth" in node:
            problems.append(
                f"{where} is refused by MLflow at {tracking_uri} ({node['mlflow']}): the server "
                "requires authentication. Set MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD in every node's environment (docker-compose: from "
                ".env), as on this driver"
            )
        elif "mlflow" in node:
            problems.append(
                f"{where} cannot reach MLflow at {tracking_uri} ({node['mlflow']}). Trials log "
                "from the nodes: pass a --tracking-uri every node can reach (in docker-compose "
                "http://mlflow:5000, not localhost), and list that host in the server's "
                "--allowed-hosts"
            )
    return problems


def check_cluster(address: str, storage: str | None = None, tracking_uri: str | None = None) -> str:
    """Check that the Ray cluster at `address` can run a study with this storage path and
    tracking URI, within CHECK_TIMEOUT_S; return a one-line summary, or raise ClusterError."""
    started = time.monotonic()
    deadline = started + CHECK_TIMEOUT_S
    local_storage = bool(storage) and "://" not in storage
    if local_storage and not Path(storage).is_absolute():
        raise ClusterError(
            f"--storage {storage} must be an absolute path that every node mounts at the same "
            "place (or a URI such as s3://bucket/studies)"
        )
    probe_gcs(address)
    marker, text = None, ""
    if local_storage:
        marker, text = _write_marker(storage)
    try:
        report = _run_driver_check(address, str(marker or ""), text, tracking_uri or "", deadline)
    finally:
        if marker is not None:
            marker.unlink(missing_ok=True)
    if not report:
        raise ClusterError(f"Ray at {address} has no alive nodes")
    problems = _problems(report, storage or "", tracking_uri or "")
    if problems:
        raise ClusterError(
            f"the Ray cluster at {address} cannot run this study:\n  - " + "\n  - ".join(problems)
        )
    cpus = sum(n["cpus"] for n in report)
    checked = [f"{len(report)} nodes, {cpus:g} CPUs"]
    if marker is not None:
        checked.append(f"storage {storage} shared")
    if tracking_uri:
        checked.append("MLflow reachable from every node")
    return (
        f"Ray at {address}: "
        + "; ".join(checked)
        + f" (checked in {time.monotonic() - started:.1f} s)"
    )
