"""The pretraining cache: the four freeze modes of the forgetting study finetuned from one
pretraining, each trial pretraining itself vs all but the first loading it, side by side.

    .venv/bin/python benchmarks/bench_pretrain_cache.py                   # ~9 min on 2 cores
    .venv/bin/python benchmarks/bench_pretrain_cache.py --pretrain-steps 1000 --rounds 1
    .venv/bin/python benchmarks/bench_pretrain_cache.py --quick    # ~15 s, a smoke check

Trials are the small budget's (search_spaces/base/small_budget.yaml) on one thread, in this
process, one after another, rounds alternating between the two contenders; each round uses a
fresh cache folder, so the cached contender pays for one pretraining and stores it. Both
contenders' final metrics are compared too: the cache must not change a single number.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time

from workloads import trial_keys

from transinv.config import from_flat
from transinv.trainer import run_trial

FREEZE_MODES = ("none", "conv", "fc", "all_but_head")


def trials(base: dict, cache: str) -> tuple[float, list[dict]]:
    started = time.perf_counter()
    results = []
    for freeze in FREEZE_MODES:
        config = from_flat({**base, "finetune.freeze": freeze, "run.pretrain_cache": cache})
        results.append(run_trial(config).metrics)
    return time.perf_counter() - started, results


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--pretrain-steps", type=int, default=400)
    parser.add_argument("--quick", action="store_true", help="tiny trials, 1 round: a smoke check")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.pretrain_steps = 1, 40
    base = {**trial_keys(args.quick), "pretrain.steps": args.pretrain_steps}
    print(f"{len(FREEZE_MODES)} finetunings of one {args.pretrain_steps}-step pretraining")
    plain, cached = [], []
    for r in range(args.rounds):
        t_plain, out_plain = trials(base, "")
        with tempfile.TemporaryDirectory() as cache:
            t_cached, out_cached = trials(base, cache)
        plain.append(t_plain)
        cached.append(t_cached)
        equal = all(same(a, b) for a, b in zip(out_plain, out_cached, strict=True))
        print(f"round {r}: pretraining each {t_plain:.1f} s, cached {t_cached:.1f} s; "
              f"metrics identical: {equal}")  # fmt: skip
        if not equal:
            raise SystemExit("the cache changed a trial's metrics")
    t_plain, t_cached = statistics.median(plain), statistics.median(cached)
    print(f"pretraining each: {t_plain:.1f} s; with the cache: {t_cached:.1f} s (medians)")
    print(f"bench_pretrain_cache: {t_plain / t_cached:.2f}x")


if __name__ == "__main__":
    main()
