"""Orchestration overhead: a 4-trial study of small-budget trials through Ray Tune + MLflow
(`python -m study run`) vs the same 4 trials in plain Python loops, side by side.

    .venv/bin/python benchmarks/bench_study.py            # ~14 min on 2 idle cores (2 rounds)
    .venv/bin/python benchmarks/bench_study.py --rounds 1 # ~7 min
    .venv/bin/python benchmarks/bench_study.py --quick    # ~40 s, a smoke check (tiny trials)

The trials are the small budget's (search_spaces/base/small_budget.yaml: the default preset's
small CNN at 64 px, 1000 pretraining + 300 finetuning steps, ~1.5 min each on one core) on a
2 x 2 grid (pretraining dataset none/glyphs x freeze mode none/all_but_head), without the
pretraining cache (a loop has none). The study runs 2 trials at a time on 1 core each, as the
small-scale set does, tracked in an MLflow server started once beforehand (its start-up is not
counted). The plain side runs the same 4 configs as 2 processes side by side, each looping over
2 of them (one vanilla, one pretrained, so both loops last alike) on 1 thread, untracked: the
same trials under the same conditions, without Ray and MLflow. Both walls include interpreter
start-up and imports. The study's own record of where its time went (`python -m study
profile`) is printed after each round.

The last line is `bench_study: <study wall / plain wall>x` (goal <= 1.3x).
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
from workloads import PROJECT, trial_keys

from study.server import start_local_server
from transinv.study_cost import format_cost, study_cost

LOOP = """
from study.space import load_space, trial_config
from transinv.trainer import run_trial
spec = load_space({space!r})
for dataset, freeze in {pairs!r}:
    run_trial(trial_config(spec, {{"pretrain.dataset": dataset, "finetune.freeze": freeze}}))
"""
# Each loop gets one vanilla and one pretrained trial: vanilla trials skip pretraining, and a
# loop holding both would finish minutes before the other while the study's scheduler keeps
# both cores busy (an earlier split by dataset measured the study at 0.92x of the loops).
LOOP_TRIALS = (
    (("none", "none"), ("glyphs", "all_but_head")),
    (("glyphs", "none"), ("none", "all_but_head")),
)


def grid_space(directory: Path, name: str, quick: bool) -> Path:
    space = {
        "study": name,
        "objective": {"metric": "finetune/acc_untrained", "mode": "max"},
        "search": {"sampler": "grid", "seed": 0},
        "samples": 1,
        "max_concurrent": 2,
        "resources": {"cpu": 1, "gpu": 0},
        "pretrain_cache": False,
        "fixed": trial_keys(quick),
        "space": {
            "pretrain.dataset": {"grid": ["none", "glyphs"]},
            "finetune.freeze": {"grid": ["none", "all_but_head"]},
        },
    }
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def wall(commands: list[list[str]], env: dict[str, str]) -> float:
    """Seconds until every command, all started at once, has exited successfully."""
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            cmd, env=env, cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )  # fmt: skip
        for cmd in commands
    ]
    outputs = [proc.communicate()[0] for proc in procs]
    elapsed = time.perf_counter() - started
    for cmd, proc, out in zip(commands, procs, outputs, strict=True):
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd[:4])} failed:\n{out[-6000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="tiny trials, 1 round: a smoke check")
    args = parser.parse_args()
    if args.quick:
        args.rounds = 1
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    size = "tiny (--quick)" if args.quick else "small-budget"
    with tempfile.TemporaryDirectory() as d, start_local_server(Path(d) / "mlflow") as server:
        tmp = Path(d)
        print(f"4 {size} trials; MLflow at {server.uri}; {args.rounds} round(s)")
        studies, loops = [], []
        for r in range(args.rounds):
            name = f"bench_study_{r}"
            space = grid_space(tmp, name, args.quick)
            loop = [
                [sys.executable, "-c", LOOP.format(space=str(space), pairs=pairs)]
                for pairs in LOOP_TRIALS
            ]
            study_env = {**env, "TRANSINV_HOME": str(tmp / f"home{r}")}
            cmd = [sys.executable, "-m", "study", "run", str(space), "--tracking-uri", server.uri]
            # Who goes first alternates between rounds.
            for contender in ("loop", "study") if r % 2 == 0 else ("study", "loop"):
                if contender == "loop":
                    loops.append(wall(loop, env))
                else:
                    studies.append(wall([cmd], study_env))
            print(f"round {r}: plain loops {loops[-1]:.1f} s, study {studies[-1]:.1f} s")
            print(format_cost(study_cost(name, server.uri)))
    t_loop, t_study = statistics.median(loops), statistics.median(studies)
    print(f"plain loops: {t_loop:.1f} s; Ray Tune + MLflow study: {t_study:.1f} s (medians)")
    print(f"bench_study: {t_study / t_loop:.2f}x")


if __name__ == "__main__":
    main()
