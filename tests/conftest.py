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


# With pytest-xdist (`-n`, `--dist loadfile`), each file runs whole on one worker, handed out in
# collection order; the suite lasts at least as long as its last-started long file. The files
# measured longest (`pytest --durations`) therefore go first; the rest keep their order.
LONGEST_FIRST = (
    "test_report.py",
    "test_study.py",
    "test_faults.py",
    "test_cluster_faults.py",
    "test_cluster.py",
    "test_paper_size.py",
    "test_analyses_known_answers.py",
    "test_benchmarks.py",
    "test_console.py",
)


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
