"""The search adapters: what turns a `StudySpec` into Ray Tune's and Optuna's objects.

From a spec come the Optuna define-by-run function (`define_by_run`), the sampler
(`build_sampler`), Ray's grid (`grid_param_space`), the searcher (`build_search`: Optuna told the
study's constraints, each suggestion repeated over seeds) and the scheduler (`build_scheduler`).
Reading and validating the study file is `space.py`; the study's lifecycle (Tuner, parent run,
resume) is `tuner.py`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import optuna
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import Repeater
from ray.tune.search.optuna import OptunaSearch

from study.space import GRID_POINT, Domain, StudySpec, grid_points
from study.study_file import SAMPLERS
from study.trial import PHASE_STEP
from transinv import config as cfg
from transinv.config import ConfigError


def _plain(value: Any) -> Any:
    """A value Optuna and Ray carry as a scalar: points travel as `x,y` strings."""
    return cfg.format_value(value) if isinstance(value, tuple) else value


class DefineByRun:
    """Optuna define-by-run function for a spec: suggests each active key in file order.

    A plain-data object so that Ray can pickle it with the searcher; it does nothing but call
    `trial.suggest_*` (Ray's wrapper passes a proxy whose `suggest_*` record the values).
    """

    def __init__(self, fixed: Mapping[str, Any], domains: tuple[Domain, ...]) -> None:
        self.fixed = dict(fixed)
        self.domains = domains

    def __call__(self, trial: optuna.Trial) -> dict[str, Any] | None:
        present = dict(self.fixed)
        for d in self.domains:
            if not d.active(present):
                continue
            if d.kind == "int":
                value = trial.suggest_int(
                    d.key, low=d.low, high=d.high, step=d.step or 1, log=d.log
                )
            elif d.kind in ("uniform", "loguniform"):
                value = trial.suggest_float(d.key, low=d.low, high=d.high, log=d.log)
            else:
                value = trial.suggest_categorical(d.key, choices=[_plain(v) for v in d.values])
            present[d.key] = value
        return None


def define_by_run(spec: StudySpec) -> Callable[[optuna.Trial], dict | None]:
    """The `space` argument of `OptunaSearch` for an Optuna-sampled spec."""
    if spec.sampler == "grid":
        raise ConfigError(
            f"{spec.path} uses search.sampler: grid; use grid_param_space, not Optuna"
        )
    return DefineByRun(spec.fixed, tuple(spec.space.values()))


def build_sampler(spec: StudySpec) -> optuna.samplers.BaseSampler:
    """The Optuna sampler the spec names, seeded, with its start-up and TPE options.

    Constraints do not go through the samplers' `constraints_func` (deprecated in Optuna 5.0):
    `ConstrainedOptunaSearch` sets them on each trial with `Trial.set_constraint`, and every
    constrained sampler (TPE, GP, NSGA-II) reads them from there."""
    startup = {} if spec.startup is None else {"n_startup_trials": spec.startup}
    with warnings.catch_warnings():
        # `group` is experimental; it splits TPE's joint model by co-occurring (conditional) keys.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if spec.sampler == "tpe":
            return optuna.samplers.TPESampler(
                seed=spec.seed,
                multivariate=spec.multivariate,
                group=spec.multivariate,
                constant_liar=spec.constant_liar,
                **startup,
            )
        if spec.sampler == "gp":
            return optuna.samplers.GPSampler(seed=spec.seed, **startup)
        if spec.sampler == "nsga2":
            population = {} if spec.startup is None else {"population_size": spec.startup}
            return optuna.samplers.NSGAIISampler(seed=spec.seed, **population)
        if spec.sampler == "random":
            return optuna.samplers.RandomSampler(seed=spec.seed)
    raise ConfigError(
        f"{spec.path} uses search.sampler: {spec.sampler}, which has no Optuna sampler; "
        f"Optuna samplers: {', '.join(s for s in SAMPLERS if s != 'grid')}"
    )


def grid_param_space(spec: StudySpec) -> dict[str, Any]:
    """Ray's `param_space` for sampler grid: one `tune.grid_search` over `grid_points`, so Ray
    launches the trials in that order (`train` and the console unpack them with
    `sampled_values`)."""
    if spec.sampler != "grid":
        raise ConfigError(
            f"{spec.path} uses search.sampler: {spec.sampler}; grid_param_space needs grid"
        )
    points = [{k: _plain(v) for k, v in point.items()} for point in grid_points(spec)]
    return {GRID_POINT: tune.grid_search(points)}


class ConstrainedOptunaSearch(OptunaSearch):
    """OptunaSearch that hands the study's constraints to Optuna: before a trial is told, each
    constraint's violation is set on it with `Trial.set_constraint` (named by the constraint's
    text), which the samplers read. A trial missing an objective, or with a NaN one, is a
    failed trial to Optuna, not a value (Optuna refuses NaN and would leave it RUNNING)."""

    def __init__(self, *args: Any, constraints: tuple = (), **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._constraints = tuple(constraints)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        trial = self._ot_trials.get(trial_id)
        if trial is not None and result and self._constraints:
            for c in self._constraints:
                trial.set_constraint(str(c), min(c.violation(result), 1e9))
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        values = [(result or {}).get(m) for m in metrics]
        if result and not all(isinstance(v, int | float) and math.isfinite(v) for v in values):
            result, error = None, True
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
        group.report(trial_id, numeric.get(objective_metrics(self.searcher)[0], math.nan))
        if group.finished_reporting():
            rows = self._group_results.pop(group.primary_trial_id)
            mean = {}
            for key in set().union(*rows):
                values = [r[key] for r in rows if key in r and not math.isnan(r[key])]
                mean[key] = float(np.mean(values)) if values else math.nan
            self.searcher.on_trial_complete(group.primary_trial_id, result=mean, **kwargs)


def objective_metrics(searcher: OptunaSearch) -> list[str]:
    """The searcher's objective metrics, one or several."""
    metric = searcher.metric
    return list(metric) if isinstance(metric, list) else [metric]


def optuna_study(searcher: OptunaSearch | SeedRepeater):
    """The Optuna study inside Ray's searcher (a private attribute: read here only)."""
    return getattr(searcher, "searcher", searcher)._ot_study


def build_search(spec: StudySpec) -> OptunaSearch | SeedRepeater | None:
    """Optuna for tpe/gp/nsga2/random (each suggestion repeated over `repeat` seeds); None for
    grid (Tune's own grid_search, no searcher). Several objectives become Optuna's directions."""
    if spec.sampler == "grid":
        return None
    # metric and mode go to the searcher itself: with a define-by-run space, Tune does not pass
    # TuneConfig's down through its concurrency limiter.
    metrics, modes = zip(*(spec.objectives or [(spec.objective, spec.mode)]), strict=True)
    several = len(metrics) > 1
    search = ConstrainedOptunaSearch(
        space=define_by_run(spec),
        metric=list(metrics) if several else metrics[0],
        mode=list(modes) if several else modes[0],
        sampler=build_sampler(spec),
        points_to_evaluate=[{k: _plain(v) for k, v in p.items()} for p in spec.enqueue] or None,
        constraints=spec.constraints,
    )
    return SeedRepeater(search, spec.repeat) if spec.repeat > 1 else search


def build_scheduler(spec: StudySpec):
    """FIFO by default, so every trial yields a full forgetting curve; ASHA on our finetuning
    step when asked, on the first objective."""
    if spec.scheduler != "asha":
        return FIFOScheduler()
    asha = dict(spec.asha)
    max_t = asha.pop("max_t", None) or finetune_horizon(spec)
    return ASHAScheduler(time_attr=PHASE_STEP, max_t=max_t, **asha)


def finetune_horizon(spec: StudySpec) -> int:
    """The most finetuning steps any trial of the spec runs: its fixed value, else the largest
    the space can suggest, else the config default. ASHA's rungs need one horizon for all
    trials; a trial with fewer steps ends on its own before the later rungs."""
    key = "finetune.steps"
    if key in spec.fixed:
        return int(spec.fixed[key])
    domain = spec.space.get(key)
    if domain is not None:
        return int(max(domain.candidates()))
    return int(cfg.TrialConfig().finetune.steps)
