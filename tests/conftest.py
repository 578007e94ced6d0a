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


def pytest_collection_modifyitems(config, items):
    """Modules marked `slow` (studies through Ray, servers, waits) first, longest `minutes`
    first: pytest-xdist (`-n`, `--dist loadfile`, no reordering; pyproject.toml) hands out whole
    files in this order, so the longest start at once and the short ones fill the gaps, instead
    of a long file starting last and running alone."""

    def rank(item):
        mark = item.get_closest_marker("slow")
        return (0, -mark.kwargs.get("minutes", 0)) if mark else (1, 0)

    items.sort(key=rank)  # stable: collection order within a rank


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
