"""Every benchmark runs: each script with --quick (tiny sizes, seconds to a minute), checking that
its last line is its primary figure, `bench_<name>: <ratio>x`. The figures themselves are
measured on an idle machine (README, Benchmarks), not here."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow(minutes=5)

PROJECT = Path(__file__).resolve().parents[1]
BENCHMARKS = sorted((PROJECT / "benchmarks").glob("bench_*.py"))


def test_every_benchmark_is_listed():
    assert len(BENCHMARKS) >= 6


@pytest.mark.parametrize("script", BENCHMARKS, ids=[p.stem for p in BENCHMARKS])
def test_quick_run_ends_with_its_primary_ratio(script, tmp_path):
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "TRANSINV_HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, str(script), "--quick"],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        # bench_search --quick takes ~140 s alone; the suite's other worker shares the cores.
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    last = done.stdout.strip().splitlines()[-1]
    assert re.fullmatch(rf"{script.stem}: \d+\.\d+x", last), last
