"""Orchestration overhead: a 4-trial tiny study through Ray Tune + MLflow (`python -m study run`)
vs the same 4 trials in a plain Python loop, each as a fresh process, side by side.

    .venv/bin/python benchmarks/bench_study.py            # ~3 min on 2 cores
    .venv/bin/python benchmarks/bench_study.py --rounds 1

The study is the smoke study's trial (search_spaces/smoke.yaml) on a 2 x 2 grid (pretraining
dataset x freeze mode), 2 trials at a time on 1 core each, tracked in an MLflow server started
once beforehand (its start-up is not counted). The plain loop runs the same 4 configs one after
another with 2 threads, untracked. Both walls include interpreter start-up and imports.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from study.server import start_local_server

PROJECT = Path(__file__).resolve().parents[1]

LOOP = """
import torch
from study.space import load_space, trial_config
from transinv.trainer import run_trial
torch.set_num_threads(2)
spec = load_space({space!r})
for dataset in ("none", "glyphs"):
    for freeze in ("none", "all_but_head"):
        sampled = {{"pretrain.dataset": dataset, "finetune.freeze": freeze}}
        run_trial(trial_config(spec, sampled))
"""


def grid_space(directory: Path, name: str) -> Path:
    smoke = yaml.safe_load((PROJECT / "search_spaces" / "smoke.yaml").read_text())
    smoke.update(study=name, search={"sampler": "grid", "seed": 0}, samples=1)
    smoke.pop("constraints", None)
    smoke["fixed"]["pretrain.translation"] = 1.0
    smoke["space"] = {
        "pretrain.dataset": {"grid": ["none", "glyphs"]},
        "finetune.freeze": {"grid": ["none", "all_but_head"]},
    }
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(smoke, sort_keys=False))
    return path


def wall(cmd: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(cmd, env=env, cwd=PROJECT, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    with tempfile.TemporaryDirectory() as d, start_local_server(Path(d) / "mlflow") as server:
        tmp = Path(d)
        print(f"4 trials of the smoke study; MLflow at {server.uri}; {args.rounds} round(s)")
        studies, loops = [], []
        for r in range(args.rounds):
            space = grid_space(tmp, f"bench_study_{r}")
            loop_code = LOOP.format(space=str(space))
            loops.append(wall([sys.executable, "-c", loop_code], env))
            study_env = {**env, "TRANSINV_HOME": str(tmp / f"home{r}")}
            cmd = [sys.executable, "-m", "study", "run", str(space), "--tracking-uri", server.uri]
            studies.append(wall(cmd, study_env))
            print(f"round {r}: plain loop {loops[-1]:.1f} s, study {studies[-1]:.1f} s")
    t_loop, t_study = statistics.median(loops), statistics.median(studies)
    print(f"plain loop: {t_loop:.1f} s; Ray Tune + MLflow study: {t_study:.1f} s (medians)")
    print(f"bench_study: {t_study / t_loop:.2f}x")


if __name__ == "__main__":
    main()
