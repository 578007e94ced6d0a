"""Shared fixtures: a real `mlflow server` on 127.0.0.1 and a real local Ray, one each per
session, started and stopped by these fixtures only (by PID, never `ray stop`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")

PROJECT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server (SQLite backend, proxied artifact folder)."""
    from study.server import start_local_server

    server = start_local_server(tmp_path_factory.mktemp("mlflow"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tracking_uri(mlflow_server) -> str:
    return mlflow_server.uri
