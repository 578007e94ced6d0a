"""A study on Ray Tune: searcher, scheduler, storage, the parent MLflow run, and relaunch = resume.

`run_study` is the whole lifecycle: validate the space, refuse a changed space for an existing
study, open (or find) the parent run, build a new Tuner or restore the saved one, fit, then
reconcile MLflow with what Ray reports (no run left RUNNING) and say whether the study finished.
Connecting to Ray and starting servers is the CLI's job (`cli.py`).
"""

from __future__ import annotations

import json
import math
import platform
import signal
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import Repeater
from ray.tune.search.optuna import OptunaSearch

from study.space import (
    StudySpec,
    build_sampler,
    define_by_run,
    grid_param_space,
)
from study.trial import PHASE_STEP, StudyContext, train
from transinv import constraints
from transinv.config import ConfigError
from transinv.tracking import TAG_DIGEST, TAG_TRIAL, Tracker

STUDY_FILE = "transinv_study.json"
PACKAGES = ("transinv", "torch", "torchvision", "ray", "optuna", "mlflow", "pandas", "numpy")


class ConstrainedOptunaSearch(OptunaSearch):
    """OptunaSearch that hands the study's constraints to Optuna: before a trial is told, its
    violations go into the trial's user attributes, which the samplers' `constraints_func`
    reads (see `space.constraints_from_user_attrs`)."""

    def __init__(self, *args: Any, constraints: tuple = (), **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._constraints = tuple(constraints)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        trial = self._ot_trials.get(trial_id)
        if trial is not None and result and self._constraints:
            violations = [min(c.violation(result), 1e9) for c in self._constraints]
            trial.set_user_attr("constraints", violations)
        value = (result or {}).get(self.metric)
        if result and isinstance(value, float) and math.isnan(value):
            result = None  # a NaN objective is a failed trial to Optuna, not a value
            error = True
        super().on_trial_complete(trial_id, result, error)


class SeedRepeater(Repeater):
    """Runs each suggestion once per seed (Ray's `__trial_index__`, mapped to `seed` by the
    trainable) and tells the searcher the mean of every reported metric. Ray's own Repeater
    passes on the objective alone, which would hide the constraint metrics from Optuna."""

    def __init__(self, searcher: OptunaSearch, repeat: int):
        super().__init__(searcher, repeat=repeat, set_index=True)
        self._group_results: dict[str, list[dict[str, float]]] = {}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, **kwargs: Any):
        group = self._trial_id_to_group[trial_id]
        numeric = {
            k: float(v)
            for k, v in (result or {}).items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }
        self._group_results.setdefault(group.primary_trial_id, []).append(numeric)
        group.report(trial_id, numeric.get(self.searcher.metric, math.nan))
        if group.finished_reporting():
            rows = self._group_results.pop(group.primary_trial_id)
            mean = {}
            for key in set().union(*rows):
                values = [r[key] for r in rows if key in r and not math.isnan(r[key])]
                mean[key] = float(np.mean(values)) if values else math.nan
            self.searcher.on_trial_complete(group.primary_trial_id, result=mean, **kwargs)


def optuna_study(searcher: OptunaSearch | SeedRepeater):
    """The Optuna study inside Ray's searcher (a private attribute: read here only)."""
    return getattr(searcher, "searcher", searcher)._ot_study


def expected_trials(spec: StudySpec) -> int:
    """How many trials a complete study has."""
    if spec.sampler != "grid":
        return spec.samples
    return spec.samples * math.prod(len(d.values) for d in spec.space.values())


def build_search(spec: StudySpec) -> OptunaSearch | SeedRepeater | None:
    """Optuna for tpe/gp/random (each suggestion repeated over `repeat` seeds); None for grid
    (Tune's own grid_search, no searcher)."""
    if spec.sampler == "grid":
        return None
    # metric and mode go to the searcher itself: with a define-by-run space, Tune does not pass
    # TuneConfig's down through its concurrency limiter.
    search = ConstrainedOptunaSearch(
        space=define_by_run(spec),
        metric=spec.objective,
        mode=spec.mode,
        sampler=build_sampler(spec),
        constraints=spec.constraints,
    )
    return SeedRepeater(search, spec.repeat) if spec.repeat > 1 else search


def build_scheduler(spec: StudySpec):
    """FIFO by default, so every trial yields a full forgetting curve; ASHA on our finetuning
    step when asked."""
    if spec.scheduler != "asha":
        return FIFOScheduler()
    asha = dict(spec.asha)
    max_t = asha.pop("max_t", None) or spec.fixed.get("finetune.steps", 1000)
    return ASHAScheduler(time_attr=PHASE_STEP, max_t=max_t, **asha)


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
            "constraints": constraints.to_json(spec.constraints),
            "resources": f"cpu={spec.cpu} gpu={spec.gpu}",
            "repeat": spec.repeat,
            "report": ",".join(spec.report),
            "pretrain_cache": spec.pretrain_cache,
        },
        tags={f"version.{k}": v for k, v in package_versions().items()},
    )
    run = tracker.client.get_run(parent)
    if run.data.tags.get(TAG_DIGEST) != spec.digest:
        raise ConfigError(
            f"study {spec.name!r} on {tracker.uri} was started from a different space "
            f"(digest {run.data.tags.get(TAG_DIGEST, '?')[:12]}, now {spec.digest[:12]}); "
            "give the changed study a new `study:` name"
        )
    if not any(a.path == spec.path.name for a in tracker.client.list_artifacts(parent)):
        tracker.log_file(parent, spec.path)
    return parent


class RunCloser(tune.Callback):
    """Driver-side: closes the MLflow run of a trial whose worker died without closing it
    (SIGKILL, OOM), and of any trial Tune reports finished while its run says RUNNING."""

    def __init__(self, tracking_uri: str, study: str):
        self.tracking_uri, self.study = tracking_uri, study

    def _close(self, trial, status: str, error: str | None = None) -> None:
        tracker = Tracker(self.tracking_uri)
        exp = tracker.experiment(self.study)
        for run in tracker.find_runs(exp, f"tags.`{TAG_TRIAL}` = '{trial.trial_id}'"):
            if run.info.status == "RUNNING":
                tracker.finish(run.info.run_id, status, error)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._close(trial, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        message = getattr(trial, "error_message", None) or "trial errored (see Ray logs)"
        self._close(trial, "FAILED", str(message))


def make_tuner(spec: StudySpec, context: StudyContext, storage: str, resume: bool) -> tune.Tuner:
    trainable = tune.with_resources(
        tune.with_parameters(train, study=context), {"cpu": spec.cpu, "gpu": spec.gpu}
    )
    path = f"{storage.rstrip('/')}/{spec.name}"
    if resume and tune.Tuner.can_restore(path):
        return tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
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
            callbacks=[RunCloser(context.tracking_uri, spec.name)],
            verbose=1,
        ),
    )


def reconcile_runs(tracker: Tracker, spec: StudySpec, grid, interrupted: bool) -> None:
    """After fit: runs of finished trials end FINISHED, of errored trials FAILED, and runs of
    trials cut off by an interruption KILLED (a resume marks them RUNNING again)."""
    states = {}
    for result in grid:
        trial_id = (result.metrics or {}).get("trial_id")
        if trial_id:
            states[trial_id] = "FAILED" if result.error else "FINISHED"
    exp = tracker.experiment(spec.name)
    for run in tracker.find_runs(exp, "attributes.status = 'RUNNING'"):
        trial_id = run.data.tags.get(TAG_TRIAL)
        if trial_id is None:
            continue  # the parent run
        status = states.get(trial_id) or ("KILLED" if interrupted else None)
        if status:
            tracker.finish(run.info.run_id, status)


def run_study(
    spec: StudySpec, tracking_uri: str, storage: str, local_storage: bool = True
) -> StudyOutcome:
    """Run (or resume) a study to the end; Ctrl-C or SIGTERM stops it resumably."""
    tracker = Tracker(tracking_uri)
    experiment_dir = Path(storage) / spec.name
    resume = check_resumable(spec, experiment_dir) if local_storage else True
    parent = open_parent_run(spec, tracker)
    # Shared by every study in the same storage, so studies reuse each other's pretrainings.
    cache = str(Path(storage) / "pretrain_cache") if spec.pretrain_cache and local_storage else ""
    context = StudyContext(spec, tracking_uri, parent, cache)
    tuner = make_tuner(spec, context, storage, resume)
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
    reconcile_runs(tracker, spec, grid, interrupted=not outcome.complete)
    if outcome.complete:
        tracker.set_tags(parent, {"transinv.finished_trials": finished, "transinv.errors": errored})
        tracker.finish(parent, "FINISHED")
    else:
        tracker.finish(parent, "KILLED")
    return outcome


def _completed(result) -> bool:
    return (result.metrics or {}).get("phase") == "done"
