"""`python -m study`: run studies on Ray, browse them in MLflow, query them with pandas.

    python -m study run search_spaces/smoke.yaml        # ~1 min on 2 cores; rerun = resume
    python -m study ui                                  # browse local studies in MLflow
    python -m study list
    python -m study status smoke
    python -m study best smoke --metric finetune/acc_untrained --by pretrain.dataset
    python -m study best tradeoffs --pareto          # non-dominated conditions, mean ± std, n
    python -m study importance smoke --metric finetune/acc_untrained   # PED-ANOVA and fANOVA
    python -m study export-optuna smoke --storage-url sqlite:///optuna.db
    python -m study report claim5_forgetting --out reports/   # Markdown + figures from MLflow
    python -m study profile claim5_forgetting           # where the study's time went

With no --tracking-uri (nor MLFLOW_TRACKING_URI), commands use a local MLflow server on
127.0.0.1 whose runs and artifacts live in the state directory ($TRANSINV_HOME, default
./.transinv); `run` starts it for the study's duration. With no --address (nor RAY_ADDRESS),
`run` starts a local Ray sized to this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from study.server import LocalServer, start_local_server
from transinv.config import ConfigError
from transinv.tracking import ROLE_TRIAL, Tracker, TrackingError, check_reachable, role_filter

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def state_dir() -> Path:
    return Path(os.environ.get("TRANSINV_HOME", ".transinv")).resolve()


def _server_file() -> Path:
    return state_dir() / "mlflow" / "server.json"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


@contextmanager
def tracking(uri: str | None, port: int | None = None) -> Iterator[str]:
    """The tracking URI to use: the given one (checked within 10 s), else a local server that
    is already up for this state directory, else a new one for the block's duration."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        check_reachable(uri, timeout_s=10.0)
        yield uri
        return
    info = _server_file()
    if info.exists():
        saved = json.loads(info.read_text())
        if _alive(saved["pid"]):
            try:
                check_reachable(saved["uri"], timeout_s=5.0)
                yield saved["uri"]
                return
            except TrackingError:
                pass
    server: LocalServer = start_local_server(state_dir() / "mlflow", port=port)
    try:
        info.write_text(json.dumps({"uri": server.uri, "pid": server.process.pid}))
        yield server.uri
    finally:
        server.stop()
        info.unlink(missing_ok=True)


def connect_ray(
    address: str | None,
    storage: str | None = None,
    tracking_uri: str | None = None,
    verbose: bool = True,
) -> None:
    """Local Ray sized to this machine, or the cluster at `address` once `study.connect` has
    checked, within 30 s, that it answers, accepts this driver's auth, shares `storage` across
    its nodes and reaches `tracking_uri` from each of them. Ray's own console output only when
    `verbose` (`console.ray_output`)."""
    import ray

    from study.console import ray_output

    output = ray_output(verbose)

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = address or os.environ.get("RAY_ADDRESS")
    if address and address != "local":
        from study.connect import check_cluster

        print(check_cluster(address, storage, tracking_uri), flush=True)
        ray.init(address=address, **output)
        return
    ray.init(
        # "local": a new instance even where `ray start` left a cluster address behind in
        # /tmp/ray/ray_current_cluster, which ray.init() would otherwise join.
        address="local",
        num_cpus=os.cpu_count(),
        include_dashboard=False,
        # Trials pass nothing large through the object store; Ray's default of 30% of RAM
        # would starve the trials themselves on a small machine.
        object_store_memory=512 * 2**20,
        **output,
    )


def cmd_run(args: argparse.Namespace) -> int:
    from study.space import load_space

    # Every file is checked before anything starts: a typo in the fifth study of a set must
    # not surface an hour in.
    specs = [load_space(path) for path in args.space]
    if args.dry_run:
        return max(_dry_run(spec) for spec in specs)
    storage = args.storage or str(state_dir() / "ray_results")
    local_storage = "://" not in storage
    if args.address and local_storage and not Path(storage).is_absolute():
        raise ConfigError(f"--storage {storage} must be an absolute shared path on a cluster")
    if local_storage and not args.wait:  # refuse before starting a server and Ray
        from study.lock import check_free

        for spec in specs:
            check_free(Path(storage) / spec.name, spec.name)
    code = EXIT_OK
    with tracking(args.tracking_uri) as uri:
        if args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"):
            # Not the local server's: that one stops with this command (`study ui` serves it).
            print(f"MLflow: {uri}/#/experiments", flush=True)
        from study.console import summary_lines

        connect_ray(args.address, storage, uri, args.verbose)
        from study.tuner import expected_trials, run_study

        for path, spec in zip(args.space, specs, strict=True):
            started = time.monotonic()
            print(
                f"study {spec.name!r} from {path}: {expected_trials(spec)} trials, "
                f"{spec.max_concurrent} at a time",
                flush=True,
            )
            outcome = run_study(spec, uri, storage, local_storage, args.wait, args.verbose)
            print(
                f"study {spec.name}: {outcome.finished} of {outcome.expected} trials finished, "
                f"{outcome.errored} errored in {time.monotonic() - started:.0f} s; results in "
                f"{outcome.path}",
                flush=True,
            )
            if outcome.complete:
                print("\n".join(summary_lines(spec, uri)), flush=True)
            if not outcome.complete:
                print(
                    f"interrupted: run `{study_command()} run {' '.join(args.space)}` again to "
                    "resume",
                    file=sys.stderr,
                )
                return EXIT_INTERRUPTED
            if outcome.errored:
                code = EXIT_FAILED
    names = " ".join(spec.name for spec in specs)
    cmd = study_command()
    print(f"browse: {cmd} ui   then open the study {specs[0].name!r}")
    if specs[0].multi_objective:
        print(f"front:  {cmd} best {specs[0].name} --pareto")
    else:
        print(f"best:   {cmd} best {specs[0].name} --metric {specs[0].objective}")
    if any(spec.report for spec in specs):
        print(f"report: {cmd} report {names}")
    return code


def study_command() -> str:
    """`python -m study` as the user can type it again: the interpreter they ran, relative to
    the current folder where it lies below it (`.venv/bin/python -m study`)."""
    exe = Path(sys.executable)
    try:
        exe = exe.relative_to(Path.cwd())
    except ValueError:
        pass
    return f"{exe} -m study"


def _dry_run(spec) -> int:
    """Print the trials a study would launch, without Ray or a server."""
    from study.space import grid_points, trial_config
    from study.tuner import expected_trials

    repeat = f", each suggestion over seeds 0-{spec.repeat - 1}" if spec.repeat > 1 else ""
    print(f"study {spec.name}: {expected_trials(spec)} trials, sampler {spec.sampler}{repeat}")
    objectives = ", ".join(f"{mode} {metric}" for metric, mode in spec.objectives)
    print(f"objectives: {objectives}; resources cpu={spec.cpu} gpu={spec.gpu}")
    if spec.sampler == "grid":
        for i, config in enumerate(grid_points(spec) * spec.samples):
            trial_config(spec, config)  # validates every combination
            print(f"  {i:4d} " + " ".join(f"{k}={v}" for k, v in config.items()))
    else:
        print("  space: " + ", ".join(spec.space))
    return EXIT_OK


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def cmd_ui(args: argparse.Namespace) -> int:
    # `kill PID` must stop the server this command started, not orphan it.
    signal.signal(signal.SIGTERM, _interrupt)
    with tracking(args.tracking_uri, port=args.port) as uri:
        print(f"MLflow UI: {uri}   (Ctrl-C to stop)", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            return EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    with tracking(args.tracking_uri) as uri:
        tracker = Tracker(uri)
        for name, experiment_id in tracker.studies():
            parent = tracker.parent_run(experiment_id, name)
            if parent is not None:
                trials = tracker.find_runs(experiment_id, role_filter(ROLE_TRIAL))
                print(f"{name:24s} {parent.info.status:9s} {len(trials):4d} trials")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from transinv.results import load_runs

    with tracking(args.tracking_uri) as uri:
        runs = load_runs(args.study, uri)
    counts = runs["status"].value_counts().to_dict() if len(runs) else {}
    print(f"study {args.study}: {len(runs)} trial runs " + json.dumps(counts))
    columns = [c for c in ("trial_id", "status", "finetune/acc_trained",
                           "finetune/acc_untrained") if c in runs]  # fmt: skip
    if len(runs):
        print(runs[columns].to_string(index=False))
    return EXIT_OK


def cmd_best(args: argparse.Namespace) -> int:
    from transinv.constraints import Constraint
    from transinv.results import best_regimes, load_runs

    where = [Constraint.parse(text, "--where") for text in args.where or []]
    if args.pareto:
        return _pareto(args, where)
    if not args.metric:
        raise ConfigError("best needs --metric METRIC (or --pareto for the study's objectives)")
    with tracking(args.tracking_uri) as uri:
        runs = load_runs(args.study, uri)
    table = best_regimes(runs, args.metric, by=args.by or (), mode=args.mode, where=where)
    applied = [str(c) for c in dict.fromkeys([*runs.attrs.get("constraints", ()), *where])]
    if applied:
        print(f"constraints (on each condition's mean): {'; '.join(applied)}")
    if table.empty:
        print(f"no condition of {args.study} with a finished trial meets the constraints")
    else:  # a blank cell: the key is inactive in that condition
        print(table.head(args.top).to_string(index=False, na_rep=""))
    return EXIT_OK


def _objectives(args: argparse.Namespace, uri: str) -> list[tuple[str, str]]:
    """--objective METRIC:MODE options, else the study's own objectives."""
    from transinv.results import study_info, study_objectives

    if not args.objective:
        return study_objectives(study_info(args.study, uri))
    out = []
    for text in args.objective:
        metric, _, mode = text.rpartition(":")
        if not metric or mode not in ("max", "min"):
            raise ConfigError(f"bad --objective {text!r}; expected METRIC:max or METRIC:min")
        out.append((metric, mode))
    return out


def _pareto(args: argparse.Namespace, where: list) -> int:
    from transinv.results import load_runs, pareto

    with tracking(args.tracking_uri) as uri:
        runs = load_runs(args.study, uri)
        objectives = _objectives(args, uri)
    front = pareto(runs, objectives, by=args.by, where=where)
    keys = [c for c in front.columns if " mean" not in c and " std" not in c and c != "n"]
    table = front[keys].copy()
    for metric, mode in objectives:
        mean, std = front[f"{metric} mean"], front[f"{metric} std"].fillna(0.0)
        cells = [f"{m:.3f} ± {s:.3f}" for m, s in zip(mean, std, strict=True)]
        table[f"{metric} ({mode})"] = cells
    table["n"] = front["n"]
    print(f"Pareto front of {args.study}: {len(front)} conditions (mean ± std over trials)")
    print(table.head(args.top).to_string(index=False) if len(table) else "(no condition)")
    return EXIT_OK


def cmd_importance(args: argparse.Namespace) -> int:
    from transinv.results import importance, load_runs

    with tracking(args.tracking_uri) as uri:
        runs = load_runs(args.study, uri)
        metrics = [(args.metric, args.mode)] if args.metric else _objectives(args, uri)
    for metric, mode in metrics:
        table = importance(runs, metric, params=args.params, mode=mode)
        print(f"importance for {mode} {metric} over {table.attrs['trials']} trials "
              "(seed: the null reference)")  # fmt: skip
        print(table.to_string(index=False, float_format="{:.3f}".format))
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from transinv.report import build_report

    with tracking(args.tracking_uri) as uri:
        path = build_report(
            args.studies,
            uri,
            args.out,
            args.analysis,
            not args.no_log,
            args.readme,
            args.readme_block,
        )
    print(f"report: {path}")
    if not args.no_log:
        print("logged to each study's parent run under report/")
    return EXIT_OK


def cmd_profile(args: argparse.Namespace) -> int:
    from transinv.study_cost import format_cost, study_cost

    with tracking(args.tracking_uri) as uri:
        print(format_cost(study_cost(args.study, uri)))
    return EXIT_OK


def cmd_export_optuna(args: argparse.Namespace) -> int:
    from study.export import export_optuna

    storage = args.storage or str(state_dir() / "ray_results")
    count = export_optuna(Path(storage) / args.study, args.study, args.storage_url)
    print(f"exported {count} trials of {args.study} to {args.storage_url}")
    print(f"view: optuna-dashboard {args.storage_url}")
    return EXIT_OK


STUDY_HELP = "study name (the `study:` key of its file)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m study", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, fn, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.set_defaults(fn=fn)
        p.add_argument("--tracking-uri", help="MLflow server (default: a local one)")
        return p

    p = add("run", cmd_run, "run or resume a study from a search space file")
    p.add_argument(
        "space", nargs="+", help="search space YAML files, run in order (search_spaces/smoke.yaml)"
    )
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else local)")
    p.add_argument("--storage", help="Tune storage: a shared path or URI (default: state dir)")
    p.add_argument("--dry-run", action="store_true", help="print the trials, run nothing")
    p.add_argument(
        "--verbose",
        action="store_true",
        help="Ray's own output (trial tables, checkpoint notices) instead of the compact progress",
    )
    p.add_argument(
        "--wait",
        action="store_true",
        help="if another driver runs the study, wait for it to end instead of refusing",
    )
    p = add("ui", cmd_ui, "serve the local MLflow UI")
    p.add_argument("--port", type=int, default=5000, help="port on 127.0.0.1 (default: 5000)")
    add("list", cmd_list, "list studies")
    p = add("status", cmd_status, "trials of a study and their status")
    p.add_argument("study", help=STUDY_HELP)
    p = add("best", cmd_best, "conditions ranked by a metric, with spread over seeds")
    p.add_argument("study", help=STUDY_HELP)
    p.add_argument("--metric", help="metric to rank by (not with --pareto)")
    p.add_argument(
        "--by",
        nargs="+",
        metavar="KEY",
        help="config keys to show first; a condition is always every key the study varies",
    )
    p.add_argument("--mode", choices=("max", "min"), default="max", help="higher or lower wins")
    p.add_argument(
        "--where",
        action="append",
        metavar="'METRIC OP VALUE'",
        help="a constraint on each condition's mean, added to the study's own (repeatable)",
    )
    p.add_argument("--top", type=int, default=10, help="rows to print (default: 10)")
    p.add_argument("--pareto", action="store_true", help="the Pareto front of the objectives")
    p.add_argument(
        "--objective", action="append", help="METRIC:max|min for --pareto (default: the study's)"
    )
    p = add("importance", cmd_importance, "how much each config key moves a metric")
    p.add_argument("study", help=STUDY_HELP)
    p.add_argument("--metric", help="default: each of the study's objectives")
    p.add_argument("--mode", choices=("max", "min"), default="max", help="with --metric")
    p.add_argument("--params", nargs="+", help="config keys (default: those that vary)")
    p.add_argument("--objective", action="append", help=argparse.SUPPRESS)
    p = add("report", cmd_report, "Markdown report with figures of finished studies")
    p.add_argument("studies", nargs="+", metavar="STUDY", help="study names, reported together")
    p.add_argument("--out", default="reports", help="folder for report.md and figures")
    p.add_argument("--analysis", nargs="+", help="analyses to run instead of the study file's")
    p.add_argument("--no-log", action="store_true", help="do not log the report to MLflow")
    p.add_argument("--readme", help="also rewrite the results section of this Markdown file")
    p.add_argument(
        "--readme-block",
        default="results",
        metavar="NAME",
        help="rewrite the block between <!-- NAME:begin --> and <!-- NAME:end --> (default: "
        "results)",
    )
    p = add("profile", cmd_profile, "where a study's time went, from its runs in MLflow")
    p.add_argument("study", help=STUDY_HELP)
    p = add("export-optuna", cmd_export_optuna, "copy a study's Optuna trials to a storage")
    p.add_argument("study", help=STUDY_HELP)
    p.add_argument("--storage", help="Tune storage the study ran in (default: state dir)")
    p.add_argument(
        "--storage-url", default="sqlite:///optuna.db", help="Optuna storage to copy into"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ConfigError, TrackingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, ConfigError) else EXIT_FAILED
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM outside a study's fit (which saves state)
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
