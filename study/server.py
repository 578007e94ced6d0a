"""A local MLflow tracking server for one machine: what `python -m study run` and `ui` start when
no --tracking-uri is given, and what the tests and benchmarks start for themselves.

Talking to a server is `transinv/tracking.py`; this module only starts and stops one.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from transinv.tracking import TrackingError, check_reachable


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class LocalServer:
    """An `mlflow server` child process on loopback with SQLite and an artifact folder."""

    uri: str
    process: subprocess.Popen
    state_dir: Path

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM to the server stops its workers too."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> LocalServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_local_server(
    state_dir: Path, port: int | None = None, host: str = "127.0.0.1", timeout_s: float = 60.0
) -> LocalServer:
    """Start `mlflow server` (one worker, job execution off: ~0.5 GB instead of 2-3 GB) storing
    runs in `state_dir/mlflow.db` and artifacts in `state_dir/artifacts`; wait until it answers."""
    state_dir = Path(state_dir).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    if port:
        # Another server on the port would answer the health check below for ours.
        with socket.socket() as probe:
            # As the server binds: a listener refuses, closed connections (TIME_WAIT) do not.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                raise TrackingError(
                    f"port {port} on {host} is in use ({exc.strerror}); pass another --port, "
                    "or --tracking-uri to use the server already there"
                ) from None
    port = port or free_port(host)
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{state_dir / 'mlflow.db'}",
        "--artifacts-destination", str(state_dir / "artifacts"),
        "--host", host, "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    env = {
        **os.environ,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    }
    log = open(state_dir / "server.log", "ab")  # noqa: SIM115 - the child keeps it
    process = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    uri = f"http://{host}:{port}"
    server = LocalServer(uri, process, state_dir)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                tail = (state_dir / "server.log").read_text(errors="replace")[-2000:]
                raise TrackingError(f"mlflow server exited with {process.returncode}:\n{tail}")
            try:
                check_reachable(uri, timeout_s=1.0)
                return server
            except TrackingError:
                time.sleep(0.3)
        raise TrackingError(f"mlflow server at {uri} did not answer within {timeout_s:.0f} s")
    except BaseException:  # a signal while starting must not leave the server behind
        server.stop()
        raise
