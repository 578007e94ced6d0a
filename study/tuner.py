"""A study's lifecycle on Ray Tune: storage, the parent MLflow run, and relaunch = resume.

`run_study` is the whole lifecycle: validate the space, refuse a changed space for an existing
study, open (or find) the parent run, build a new Tuner or restore the saved one, fit, then
reconcile MLflow with what Ray reports (no run left RUNNING) and say whether the study finished.
The searcher and scheduler come from `search.py`; connecting to Ray and starting servers is
the CLI's job (`cli.py`).
"""

from __future__ import annotations

import json
import math
import platform
import signal
import sys
from contextlib import nullcontext
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

from ray import tune

from study.console import Progress
from study.lock import hold_study
from study.search import build_scheduler, build_search, grid_param_space
from study.space import StudySpec
from study.trial import OUTAGE, StudyContext, train
from study.tune_state import StateBackup, repair_saved_state, sessions
from transinv import constraints
from transinv.config import ConfigError
from transinv.tracking import (
    TAG_DIGEST,
    TAG_ERRORS,
    TAG_FINISHED_TRIALS,
    TAG_TRIAL,
    Tracker,
    status_filter,
    trial_filter,
)

STUDY_FILE = "transinv_study.json"
PACKAGES = ("transinv", "torch", "torchvision", "ray", "optuna", "mlflow", "pandas", "numpy")


def expected_trials(spec: StudySpec) -> int:
    """How many trials a complete study has."""
    if spec.sampler != "grid":
        return spec.samples
    return spec.samples * math.prod(len(d.values) for d in spec.space.values())


@dataclass(frozen=True)
class StudyOutcome:
    name: str
    path: Path
    expected: int
    finished: int
    errored: int
    parent_run_id: str

    @property
    def complete(self) -> bool:
        return self.finished + self.errored >= self.expected


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except Exception:
            out[name] = "missing"
    return out


def check_resumable(spec: StudySpec, experiment_dir: Path) -> bool:
    """Whether `experiment_dir` holds this study already; ConfigError if it holds it with a
    different space (changing the space of a saved study is unsupported by Tune)."""
    marker = experiment_dir / STUDY_FILE
    if not marker.exists():
        return False
    saved = json.loads(marker.read_text())
    if saved["digest"] != spec.digest:
        raise ConfigError(
            f"study {spec.name!r} in {experiment_dir} was started from a different space "
            f"(digest {saved['digest'][:12]}, now {spec.digest[:12]} from {spec.path}); "
            "restore the original file, or give the changed study a new `study:` name"
        )
    return True


def open_parent_run(spec: StudySpec, tracker: Tracker) -> str:
    parent = tracker.study_run(
        spec.name,
        spec.digest,
        params={
            "space_file": spec.path.name,
            "sampler": spec.sampler,
            "search_seed": spec.seed,
            "samples": spec.samples,
            "max_concurrent": spec.max_concurrent,
            "scheduler": spec.scheduler,
            "objective": f"{spec.mode} {spec.objective}",
            "objectives": json.dumps([list(o) for o in spec.objectives]),
            "constraints": constraints.to_json(spec.constraints),
            "resources": f"cpu={spec.cpu} gpu={spec.gpu}",
            "repeat": spec.repeat,
            "report": spec.report_plan.to_param() if spec.report_plan else "",
            "pretrain_cache": spec.pretrain_cache,
        },
        tags={f"version.{k}": v for k, v in package_versions().items()},
    )
    run = tracker.get_run(parent)
    if run.data.tags.get(TAG_DIGEST) != spec.digest:
        raise ConfigError(
            f"study {spec.name!r} on {tracker.uri} was started from a different space "
            f"(digest {run.data.tags.get(TAG_DIGEST, '?')[:12]}, now {spec.digest[:12]}); "
            "give the changed study a new `study:` name"
        )
    if spec.path.name not in tracker.artifact_paths(parent):
        tracker.log_file(parent, spec.path)
    return parent


class RunCloser(tune.Callback):
    """Driver-side: closes the MLflow run of a trial whose worker died without closing it
    (SIGKILL, OOM), and of any trial Tune reports finished while its run says RUNNING."""

    def __init__(self, tracking_uri: str, study: str):
        self.tracking_uri, self.study = tracking_uri, study

    def _close(self, trial, status: str, error: str | None = None) -> None:
        try:
            tracker = Tracker(self.tracking_uri)
            exp = tracker.experiment(self.study)
            for run in tracker.find_runs(exp, trial_filter(trial.trial_id)):
                if run.info.status == "RUNNING":
                    tracker.finish(run.info.run_id, status, error)
        except Exception as exc:  # the server away: the next reconcile or resume closes it
            print(f"warning: could not close the run of trial {trial.trial_id}: {exc}",
                  file=sys.stderr)  # fmt: skip

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._close(trial, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        message = getattr(trial, "error_message", None) or "trial errored (see Ray logs)"
        self._close(trial, "FAILED", str(message))


class OutageStop(tune.Callback):
    """Driver-side: a trial reports that the tracking server stayed away longer than
    `run.tracking_outage_s` (having checkpointed what it could not deliver); the study stops as
    on Ctrl-C, with Tune's state saved, so a relaunch resumes every trial."""

    def __init__(self) -> None:
        self.stopping = False

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result.get(OUTAGE) and not self.stopping:
            self.stopping = True
            print(f"stopping the study: {result[OUTAGE]}", file=sys.stderr, flush=True)
            signal.raise_signal(signal.SIGINT)


def make_tuner(
    spec: StudySpec,
    context: StudyContext,
    storage: str,
    resume: bool,
    verbose: bool = False,
    backup: Path | None = None,
) -> tune.Tuner:
    """A new Tuner, or the saved one when `resume` and one is saved. The console shows the
    project's compact progress (`console.Progress`), or Ray's own tables when `verbose`.
    With `backup` (the experiment folder, on local storage), Tune's saved state is kept
    readable there across a killed driver (`tune_state.py`)."""
    trainable = tune.with_resources(
        tune.with_parameters(train, study=context), {"cpu": spec.cpu, "gpu": spec.gpu}
    )
    path = f"{storage.rstrip('/')}/{spec.name}"
    callbacks = [RunCloser(context.tracking_uri, spec.name), OutageStop()]
    if not verbose:
        callbacks.append(Progress(spec, expected_trials(spec)))
    if backup is not None:
        callbacks.append(StateBackup(backup))
    if resume and tune.Tuner.can_restore(path):
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
        set_console(tuner, callbacks, verbose)
        return tuner
    return tune.Tuner(
        trainable,
        param_space=grid_param_space(spec) if spec.sampler == "grid" else {},
        tune_config=tune.TuneConfig(
            metric=spec.objective,
            mode=spec.mode,
            search_alg=build_search(spec),
            scheduler=build_scheduler(spec),
            num_samples=spec.samples,
            max_concurrent_trials=spec.max_concurrent,
            # A trial process re-imports torch (2-3 s); reusing it across trials saves that.
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=spec.name,
            storage_path=storage,
            failure_config=tune.FailureConfig(max_failures=2),
            # One checkpoint per evaluation. Keeping 4: after a kill -9 the last experiment
            # snapshot can name a checkpoint older than the newest two (seen with 2).
            checkpoint_config=tune.CheckpointConfig(num_to_keep=4),
            callbacks=callbacks,
            verbose=1 if verbose else 0,
        ),
    )


def set_console(tuner: tune.Tuner, callbacks: list[tune.Callback], verbose: bool) -> None:
    """This launch's callbacks and verbosity on a restored Tuner.

    `Tuner.restore` (Ray 2.60) takes no RunConfig: it unpickles the first launch's, whose
    callbacks hold that launch's tracking URI (a local server takes a new port each launch)
    and whose verbosity was that launch's `--verbose`. The private `_local_tuner` holds the
    config (absent under Ray Client, where the saved one stands)."""
    local = getattr(tuner, "_local_tuner", None)
    if local is None:
        return
    run_config = local.get_run_config()
    run_config.callbacks = callbacks
    run_config.verbose = 1 if verbose else 0


def reconcile_runs(tracker: Tracker, spec: StudySpec, grid, interrupted: bool) -> None:
    """After fit: runs of finished trials end FINISHED, of errored trials FAILED, and any other
    trial run still RUNNING KILLED: cut off by an interruption (a resume marks it RUNNING
    again), or left by a session whose saved state was lost (`tune_state.py`), which no
    resume will pick up."""
    states = {}
    for result in grid:
        trial_id = (result.metrics or {}).get("trial_id")
        if trial_id and result.error:
            states[trial_id] = "FAILED"
        elif trial_id and (_completed(result) or not interrupted):
            # Not interrupted and not done: stopped early by the scheduler, which ends it.
            states[trial_id] = "FINISHED"
    exp = tracker.experiment(spec.name)
    for run in tracker.find_runs(exp, status_filter("RUNNING")):
        trial_id = run.data.tags.get(TAG_TRIAL)
        if trial_id is None:
            continue  # the parent run
        tracker.finish(run.info.run_id, states.get(trial_id, "KILLED"))


def run_study(
    spec: StudySpec,
    tracking_uri: str,
    storage: str,
    local_storage: bool = True,
    wait: bool = False,
    verbose: bool = False,
) -> StudyOutcome:
    """Run (or resume) a study to the end; Ctrl-C or SIGTERM stops it resumably. One driver
    per study: StudyBusy at once if another holds it, unless `wait` (`study/lock.py`). The
    console shows the project's compact progress, or Ray's own output when `verbose`."""
    experiment_dir = Path(storage) / spec.name
    with hold_study(experiment_dir, spec.name, wait) if local_storage else nullcontext():
        return _run_study(spec, tracking_uri, storage, local_storage, experiment_dir, verbose)


def _run_study(
    spec: StudySpec,
    tracking_uri: str,
    storage: str,
    local_storage: bool,
    experiment_dir: Path,
    verbose: bool = False,
) -> StudyOutcome:
    tracker = Tracker(tracking_uri)
    resume = check_resumable(spec, experiment_dir) if local_storage else True
    parent = open_parent_run(spec, tracker)
    # Shared by every study in the same storage, so studies reuse each other's pretrainings.
    cache = str(Path(storage) / "pretrain_cache") if spec.pretrain_cache and local_storage else ""
    context = StudyContext(spec, tracking_uri, parent, cache)
    if resume and local_storage:
        for line in repair_saved_state(experiment_dir):
            print(f"warning: {line}", file=sys.stderr, flush=True)
        # `Tuner.can_restore` looks for tuner.pkl only; without a readable session's state
        # (every one set aside above), Tune's restore fails and starts over anyway.
        resume = bool(sessions(experiment_dir))
    backup = experiment_dir if local_storage else None
    tuner = make_tuner(spec, context, storage, resume, verbose, backup)
    if local_storage:
        experiment_dir.mkdir(parents=True, exist_ok=True)
        (experiment_dir / STUDY_FILE).write_text(
            json.dumps({"digest": spec.digest, "space": str(spec.path), "parent_run": parent})
        )
    # SIGTERM would kill the driver at once and lose in-flight progress; as SIGINT, Tune saves
    # its state and returns from fit().
    previous = signal.signal(signal.SIGTERM, lambda s, f: signal.raise_signal(signal.SIGINT))
    try:
        grid = tuner.fit()
    finally:
        signal.signal(signal.SIGTERM, previous)
    finished = sum(1 for r in grid if r.error is None and _completed(r))
    errored = grid.num_errors
    outcome = StudyOutcome(
        spec.name, experiment_dir, expected_trials(spec), finished, errored, parent
    )
    try:
        reconcile_runs(tracker, spec, grid, interrupted=not outcome.complete)
        if spec.multi_objective:
            log_pareto_front(tracker, spec, parent)
        if outcome.complete:
            tracker.set_tags(parent, {TAG_FINISHED_TRIALS: finished, TAG_ERRORS: errored})
            tracker.finish(parent, "FINISHED")
        else:
            tracker.finish(parent, "KILLED")
    except Exception as exc:
        if outcome.complete:
            raise
        # Stopped by a tracking outage: the runs stay RUNNING until the relaunch ends them.
        print(f"warning: run states not updated on {tracking_uri}: {exc}", file=sys.stderr)
    return outcome


PARETO_ARTIFACT = "pareto_front.json"


def log_pareto_front(tracker: Tracker, spec: StudySpec, parent: str) -> None:
    """The study's Pareto front so far (conditions over seed means, constraints applied) as a
    `{columns, data}` table on the parent run, rewritten at the end of every run or resume."""
    from transinv.results import load_runs, pareto, varying_keys

    runs = load_runs(spec.name, tracker.uri)
    if runs.empty or not all(m in runs for m, _ in spec.objectives):
        return
    keys = [k for k in varying_keys(runs) if k in spec.space] or ["trial_id"]
    front = pareto(runs, spec.objectives, by=keys, where=spec.constraints)
    table = json.loads(front.to_json(orient="split", index=False))
    tracker.log_dict(parent, {"columns": table["columns"], "data": table["data"]}, PARETO_ARTIFACT)


def _completed(result) -> bool:
    return (result.metrics or {}).get("phase") == "done"
