"""What `python -m study run` prints, through the real CLI, a real local Ray (in a child driver
process) and a real MLflow server: the project's compact progress and closing summary by
default, with none of Ray's tables, notices or hints, and Ray's own output with `--verbose`."""

from __future__ import annotations

import os
import signal

import pytest
from test_study import driver, finish, kill_group, progress, trial_runs, wait_for, write_space

pytestmark = pytest.mark.slow(minutes=3)

# Ray's own console output: table borders, the default engine's configuration box and paths,
# its status blocks, worker-forwarded checkpoint notices, and its resume hint.
RAY_LINES = (
    "╭",
    "│",
    "Configuration for experiment",
    "View detailed results here",
    "Trial status:",
    "Current best trial",
    "Checkpoint successfully created",
    "Tuner.restore",
    "(train pid=",
)


def ray_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if any(mark in line for mark in RAY_LINES)]


def test_run_prints_compact_progress_and_summary_and_resume_hint(tmp_path, tracking_uri):
    space = write_space(
        tmp_path,
        "console",
        "pretrain.dataset: {grid: [none, glyphs]}",
        sampler="grid",
        samples=1,
        pretrain_steps=200,
        finetune_steps=100,
    )
    home = tmp_path / "home"
    proc = driver(space, tracking_uri, home)

    def under_way(run) -> bool:
        phase, step = progress(run)
        return phase == "pretrain" and step >= 40

    wait_for(lambda: any(under_way(r) for r in trial_runs(tracking_uri, "console")))
    os.kill(proc.pid, signal.SIGINT)
    code, out = finish(proc)
    kill_group(proc)
    assert code == 130, out
    assert ray_lines(out) == [], out
    assert "again to resume" in out and "Tuner.restore" not in out

    # The relaunch restores the saved Tuner: still the project's console, not the first
    # launch's pickled one, and the summary once every trial has finished.
    code, out = finish(driver(space, tracking_uri, home))
    assert code == 0, out
    assert ray_lines(out) == [], out
    lines = out.splitlines()
    assert len(lines) < 30, out
    assert "2 of 2 trials finished, 0 errored" in out
    assert any("finished" in line and "pretrain.dataset=glyphs" in line for line in lines), out
    assert "per condition, mean over its finished trials (n):" in out
    table = lines[lines.index("per condition, mean over its finished trials (n):") + 1 :]
    assert table[0].split() == ["pretrain.dataset", "n", "finetune/acc_untrained"]
    assert {row.split()[0] for row in table[1:3]} == {"none", "glyphs"}
    assert any(line.startswith("chance (finetune/chance): 0.") for line in lines), out
    assert any(line.startswith("best: pretrain.dataset=") for line in lines), out


def test_verbose_brings_back_rays_output(tmp_path, tracking_uri):
    space = write_space(
        tmp_path, "loud", "optim.lr: {grid: [0.001]}", sampler="grid", samples=1,
        pretrain_steps=10, finetune_steps=10,
    )  # fmt: skip
    code, out = finish(driver(space, tracking_uri, tmp_path / "home", "--verbose"))
    assert code == 0, out
    assert "Trial status:" in out and "╭" in out and "Checkpoint successfully created" in out
    assert "1 of 1 trials finished" in out
