"""Does the search pay? Optuna samplers side by side on one study's space at equal budget,
several search seeds each: the best feasible objective found so far vs trials run, and how many
trials each search needed to reach a target.

    .venv/bin/python benchmarks/bench_search.py --home .transinv/bench_search \\
        --out docs/results/search                  # 3 samplers x 3 seeds x 12 trials, 2 cores
    .venv/bin/python benchmarks/bench_search.py --quick   # tiny trials, a smoke check (~2 min)

Each search is the study file (default search_spaces/regime_search.yaml) with only its
sampler, search seed and start-up count replaced, and one trial per suggestion (`repeat: 1`,
trial seed 0). The trainer is deterministic given its config, so a regime scores the same in
every search: the searches differ only in which regimes they ask for. All searches run in one
`python -m study run` (one Ray, one MLflow, in order) and one storage, so they share the
pretraining cache; with --home the state is kept and a rerun resumes where it stopped.

Feasible means the study's constraints hold for that trial (regime_search: acc@trained >= 0.9).
The default target, 0.78, is the best feasible acc@untrained any grid here had found when the
comparison was set up: claim5_forgetting's head-only finetuning at lr 1e-3 after whole-canvas
glyph pretraining (acc@trained 0.93), a 24-trial grid; half of it is the default budget, 12.

The last line is `bench_search: <first sampler's mean best at the budget / random's>x`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import yaml
from workloads import PROJECT, TINY

from transinv.report_markdown import markdown_table

QUICK_SPACE = {
    "pretrain.dataset": {"choice": ["none", "glyphs"]},
    "pretrain.translation": {"choice": [0.0, 1.0], "when_not": {"pretrain.dataset": "none"}},
    "pretrain.steps": {"int": [20, 40], "step": 20, "when_not": {"pretrain.dataset": "none"}},
    "finetune.steps": {"int": [10, 30], "step": 10},
    "finetune.freeze": {"choice": ["none", "all_but_head"]},
}


def search_files(args: argparse.Namespace, folder: Path) -> list[tuple[str, int, Path]]:
    """(sampler, search seed, study file) per search: the study file with its search replaced."""
    source = Path(args.space).resolve()
    raw = yaml.safe_load(source.read_text())
    if "base" in raw:  # the variants live elsewhere: their base is the original's, absolute
        raw["base"] = str((source.parent / raw["base"]).resolve())
    raw.pop("report", None)
    raw.update(samples=args.trials, repeat=1)
    if args.quick:
        tiny = {k: v for k, v in TINY.items() if k not in QUICK_SPACE}
        raw["fixed"] = {**raw.get("fixed", {}), **tiny}
        raw["space"] = QUICK_SPACE
        raw.pop("constraints", None)  # tiny trials never reach acc@trained 0.9
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for sampler in args.samplers:
        for seed in range(args.seeds):
            search = {"sampler": sampler, "seed": seed}
            if sampler in ("tpe", "gp"):
                search["startup"] = args.startup
            if sampler == "tpe":  # as regime_search: one joint model, parallel trials apart
                search.update(multivariate=True, constant_liar=True)
            name = f"{raw['study']}_{sampler}_s{seed}"
            path = folder / f"{name}.yaml"
            path.write_text(yaml.safe_dump({**raw, "study": name, "search": search}))
            out.append((sampler, seed, path))
    return out


def progress(searches: list[tuple[str, int, Path]], uri: str) -> pd.DataFrame:
    """Every search's `results.best_so_far`, stacked with `sampler` and `search seed`."""
    from study.space import load_space
    from transinv.results import best_so_far, load_runs

    frames = []
    for sampler, seed, path in searches:
        spec = load_space(path)
        curve = best_so_far(load_runs(spec.name, uri), spec.objective, spec.mode)
        frames.append(curve.assign(sampler=sampler, **{"search seed": seed}))
    table = pd.concat(frames, ignore_index=True)
    table.attrs["metric"] = spec.objective
    return table


def summary(table: pd.DataFrame, budget: int, target: float | None) -> pd.DataFrame:
    """Per sampler: the best feasible value at the budget (mean, min, max over its searches),
    feasible trials, and per search the trials it took to reach `target` ('-' if it did not)."""
    rows = []
    for sampler, searches in table.groupby("sampler", sort=False):
        ends = searches[searches["trial"] <= budget].groupby("search seed")
        best = ends["best"].last()
        row = {
            "sampler": sampler,
            "searches": len(best),
            "best mean": best.mean(),
            "best min": best.min(),
            "best max": best.max(),
            "feasible trials": f"{ends['feasible'].mean().mean():.0%}",
        }
        if target is not None:
            hit = searches[searches["best"] >= target].groupby("search seed")["trial"].min()
            row["reached target"] = f"{len(hit)} of {len(best)}"
            row["trials to target"] = " ".join(
                str(int(hit[s])) if s in hit.index else "-" for s in best.index
            )
        rows.append(row)
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--space", default=str(PROJECT / "search_spaces/regime_search.yaml"))
    parser.add_argument("--samplers", nargs="+", default=["tpe", "gp", "random"])
    parser.add_argument("--seeds", type=int, default=3, help="search seeds per sampler")
    parser.add_argument("--trials", type=int, default=12, help="trials per search (the budget)")
    parser.add_argument("--startup", type=int, default=4, help="random suggestions first")
    parser.add_argument("--target", type=float, default=0.78, help="objective to reach")
    parser.add_argument("--home", help="state directory kept for resuming (default: temporary)")
    parser.add_argument("--out", help="folder for best_so_far.csv, summary.md and the figure")
    parser.add_argument("--quick", action="store_true", help="tiny trials: a smoke check")
    args = parser.parse_args()
    if "random" not in args.samplers:
        parser.error("--samplers must include random: the ratio is against it")
    if args.quick:
        args.seeds, args.trials, args.startup, args.target = 1, 3, 1, None
    with tempfile.TemporaryDirectory() as scratch:
        home = Path(args.home or scratch).resolve()
        os.environ["TRANSINV_HOME"] = str(home)  # the study commands and `tracking` below
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        searches = search_files(args, home / "bench_search_spaces")
        print(
            f"{len(searches)} searches ({', '.join(args.samplers)} x {args.seeds} seeds) of "
            f"{args.trials} trials on {args.space}; state in {home}",
            flush=True,
        )
        command = [sys.executable, "-m", "study", "run", *(str(p) for _, _, p in searches)]
        done = subprocess.run(command, cwd=PROJECT)
        if done.returncode != 0:
            raise SystemExit(f"study run exited {done.returncode}; rerun with --home to resume")
        from study.cli import tracking

        with tracking(None) as uri:
            table = progress(searches, uri)
    report(args, table)


def report(args: argparse.Namespace, table: pd.DataFrame) -> None:
    metric = table.attrs["metric"]
    result = summary(table, args.trials, args.target)
    text = markdown_table(result)
    print(f"\nbest feasible {metric} after {args.trials} trials, per sampler:\n{text}")
    if args.out:
        from transinv.study_plots import search_curves

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        table.to_csv(out / "best_so_far.csv", index=False)
        (out / "summary.md").write_text(text + "\n")
        search_curves(table, target=args.target).savefig(out / "search_curves.png", dpi=110)
        print(f"wrote {out}/best_so_far.csv, summary.md, search_curves.png")
    means = result.set_index("sampler")["best mean"]
    first = args.samplers[0]
    print(f"{first}: {means[first]:.3f}, random: {means['random']:.3f} (mean best at the budget)")
    print(f"bench_search: {means[first] / means['random']:.2f}x")


if __name__ == "__main__":
    main()
