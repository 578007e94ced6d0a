"""Study files: the YAML schema of a search space, its validation, and each trial's config.

`load_space` reads and checks a whole study file (objective or objectives, constraints, sampler
and its options, resources, fixed keys, domains and their conditions) before anything expensive
starts, and returns a frozen `StudySpec`; `trial_config` turns a spec and a trial's sampled
values into its `TrialConfig`. Keys are the flat dotted keys of `transinv.config`, unchanged
end to end.

Reading the YAML, checking one `space` entry and the entries that say how a study searches and
runs (objectives, constraints, search, resources, scheduler, repeat), with the checker whose
errors name the file, the YAML path and the choices, is `study/study_file.py`. What Optuna and
Ray make of a spec (define-by-run space, sampler, grid, searcher, scheduler) is
`study/search.py`; the Tuner, the trainable and the CLI are `tuner.py`, `trial.py` and
`cli.py`. This module imports neither Ray nor Optuna, and starts nothing.

Conditions follow ConfigSpace: a domain is active iff every key its `when` / `when_not` names
is present (fixed, or sampled and itself active) and its value is (is not) in the listed values.
A condition may name only a fixed key or a space key that comes earlier in the file.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from study.study_file import (
    StudyFile,
    base_fixed,
    choose,
    constraints_entry,
    digest,
    domain_fields,
    enqueue_entry,
    objectives_entry,
    read_yaml,
    repeat_entry,
    resources_entry,
    scheduler_entry,
    search_entry,
)
from transinv import config as cfg
from transinv.config import ConfigError, TrialConfig
from transinv.constraints import Constraint

TOP_KEYS = (
    "study",
    "objective",
    "objectives",
    "constraints",
    "search",
    "samples",
    "max_concurrent",
    "resources",
    "scheduler",
    "asha",
    "repeat",
    "pretrain_cache",
    "report",
    "base",
    "fixed",
    "space",
)
NAME_RE = re.compile(r"^[a-z0-9_-]+$")


@dataclass(frozen=True)
class Domain:
    """The values one flat key may take, and when it is sampled at all.

    `values` holds typed values for `choice` and `grid`; `low`/`high` (inclusive for `int`),
    `step` and `log` describe `uniform`, `loguniform` (log=True) and `int`.
    """

    key: str
    kind: str
    values: tuple[Any, ...] = ()
    low: float | int | None = None
    high: float | int | None = None
    step: int | None = None
    log: bool = False
    when: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    when_not: dict[str, tuple[Any, ...]] = field(default_factory=dict)

    def active(self, values: Mapping[str, Any]) -> bool:
        """Whether this key is sampled, given the values of the (active) keys before it."""
        for key, allowed in self.when.items():
            if key not in values or _typed(key, values[key]) not in allowed:
                return False
        for key, excluded in self.when_not.items():
            if key not in values or _typed(key, values[key]) in excluded:
                return False
        return True

    def contains(self, value: Any) -> bool:
        """Whether the sampler could suggest `value` (typed) for this key."""
        if self.kind in ("choice", "grid"):
            return value in self.values
        assert self.low is not None and self.high is not None
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if not self.low <= value <= self.high:
            return False
        return self.kind != "int" or (value - self.low) % (self.step or 1) == 0

    def bounds(self) -> str:
        """What `contains` accepts, in words for an error message."""
        if self.kind in ("choice", "grid"):
            return choose(self.values)
        step = f" in steps of {self.step}" if self.kind == "int" and self.step else ""
        return f"expected {self.low} to {self.high}{step}"

    def candidates(self) -> tuple[Any, ...]:
        """Values worth a sanity build: every discrete value, or both ends of a range."""
        if self.kind in ("choice", "grid"):
            return self.values
        if self.kind == "int":
            assert self.low is not None and self.high is not None
            step = self.step or 1
            return (self.low, self.low + (self.high - self.low) // step * step)
        return (self.low, self.high)


def _typed(key: str, value: Any) -> Any:
    return cfg.parse_value(key, value)


@dataclass(frozen=True)
class StudySpec:
    """A validated study file. `fixed` holds typed values; `space` keeps the file's order."""

    name: str
    path: Path
    digest: str
    objective: str
    mode: str
    constraints: tuple[Constraint, ...]
    sampler: str
    seed: int
    samples: int
    max_concurrent: int
    cpu: float
    gpu: float
    scheduler: str
    asha: dict[str, Any]
    fixed: dict[str, Any]
    space: dict[str, Domain]
    raw: dict[str, Any]
    report: tuple[str, ...] = ()
    """Analyses `python -m study report` applies (names in `transinv.analyses.ANALYSES`)."""
    report_plan: Any = None
    """The resolved pre-registration (`transinv.analyses.ReportPlan`): every check's expected
    direction and minimal effect; the parent run logs it as its `report` param."""
    repeat: int = 1
    """Seeds per suggested regime (Optuna samplers): each suggestion runs as `repeat` trials
    with seeds 0..repeat-1 and the searcher is told their mean."""
    pretrain_cache: bool = True
    """Trials share identical pretrainings through `<storage>/pretrain_cache`."""
    objectives: tuple[tuple[str, str], ...] = ()
    """Every (metric, mode) the study optimizes, in file order; `objective`/`mode` are the
    first. One entry for `objective:`, several for `objectives:` (a multi-objective study)."""
    startup: int | None = None
    """Suggestions drawn at random before the sampler models (None: Optuna's default)."""
    multivariate: bool = True
    """TPE models the parameters jointly (and groups conditional ones)."""
    constant_liar: bool = True
    """TPE treats running trials as bad, so parallel trials spread out."""
    enqueue: tuple[dict[str, Any], ...] = ()
    """Points of the space (typed) the searcher suggests first, in order (`search.enqueue`)."""

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1


# ---------------------------------------------------------------------------------------------
# Loading and validation


def load_space(path: str | Path) -> StudySpec:
    """Read and validate a study file; one ConfigError lists every problem in it, each naming
    the file, the YAML path and the choices."""
    path = Path(path)
    f = StudyFile(path)
    raw = read_yaml(path, TOP_KEYS)
    # Each `with f.entry()` block checks one entry: a problem is noted, the defaults set before
    # it stand in for the entry, and checking goes on; all problems are raised together below.
    raw = {**f.mapping(raw, "", TOP_KEYS)}
    name = ""
    with f.entry():
        f.check("study" in raw, "study", "missing 'study'", "required keys: study, objective")
        name = raw["study"]
        ok = isinstance(name, str) and NAME_RE.match(name)
        hint = "use lower case letters, digits, _ and -"
        f.check(ok, "study", f"bad study name {name!r}", hint)
    objectives = objectives_entry(f, raw)
    metric, mode = objectives[0]

    constraints = constraints_entry(f, raw)
    sampler, seed, startup, tpe_options = search_entry(f, raw)
    samples = max_concurrent = 1
    with f.entry():
        f.check(
            "samples" in raw or sampler == "grid",
            "samples",
            "missing number of trials",
            f"required with search.sampler: {sampler}",
        )
        samples = f.integer(raw.get("samples", 1), "samples", 1)
    with f.entry():
        max_concurrent = f.integer(raw.get("max_concurrent", 1), "max_concurrent", 1)

    cpu, gpu = resources_entry(f, raw)
    scheduler, asha = scheduler_entry(f, raw)

    fixed_raw = raw.get("fixed") or {}
    fixed: dict[str, Any] = {}
    broken: set[str] = set()  # keys whose entries have problems
    with f.entry():
        f.check(isinstance(fixed_raw, dict), "fixed", f"bad fixed {fixed_raw!r}", "{key: value}")
        # A base file's keys are defaults: the study's own fixed keys and its space override
        # them.
        space_keys = set(raw["space"]) if isinstance(raw.get("space"), dict) else set()
        sources: list[tuple[StudyFile, dict[str, Any]]] = []
        with f.entry():
            sources = [
                (f.other(b), {k: v for k, v in b_fixed.items() if k not in space_keys})
                for b, b_fixed in base_fixed(f, raw.get("base"))
            ]
        for owner, entries in [*sources, (f, fixed_raw)]:
            for key, value in entries.items():
                broken.add(key)
                with owner.entry():
                    owner.config_key(key, f"fixed.{key}")
                    fixed[key] = cfg.parse_value(key, value, owner.source(f"fixed.{key}"))
                    owner.name_in_registry(key, fixed[key], f"fixed.{key}")
                    broken.discard(key)
        if sources:
            # The digest covers what the study runs, so editing the base file changes it too.
            raw = {**raw, "fixed": {k: cfg.format_value(v) for k, v in fixed.items()}}

    from transinv.analyses import ReportPlan, plan_from_yaml

    plan = ReportPlan((), {})
    with f.entry():
        plan = plan_from_yaml(raw.get("report"), str(path))
    report = list(plan.analyses)
    if plan.analyses:
        # Pre-registered: the digest covers every check's resolved expectation, so changing
        # one (in the file, or a default in transinv/analyses) makes it another study.
        raw = {**raw, "report": plan.to_dict()}
    repeat = repeat_entry(f, raw, sampler, samples, fixed)
    pretrain_cache = raw.get("pretrain_cache", True)
    with f.entry():
        ok = isinstance(pretrain_cache, bool)
        f.check(ok, "pretrain_cache", f"bad value {pretrain_cache!r}", "true or false")

    space_raw = raw.get("space") or {}
    space: dict[str, Domain] = {}
    with f.entry():
        f.check(isinstance(space_raw, dict), "space", f"bad space {space_raw!r}", "{key: domain}")
        keys = tuple(space_raw)
        for i, (key, domain) in enumerate(space_raw.items()):
            broken.add(key)
            with f.entry():
                f.config_key(key, f"space.{key}")
                hint = "keep one"
                f.check(
                    key not in fixed, f"space.{key}", f"{key!r} is both fixed and in space", hint
                )
                f.check(
                    key != "seed" or repeat == 1,
                    "space.seed",
                    "seed in space with repeat",
                    "repeat sets the seeds 0..repeat-1 itself",
                )
                fields_ = domain_fields(f, key, domain, sampler, space, fixed, keys[i:], broken)
                space[key] = Domain(**fields_)
                broken.discard(key)
        f.check(
            space or broken or sampler == "grid",
            "space",
            f"empty space with search.sampler: {sampler}",
            "to repeat a fixed config use sampler: grid with samples: N",
        )
    enqueue = enqueue_entry(f, raw, space, fixed, samples // repeat) if not broken else ()
    f.raise_problems()

    spec = StudySpec(
        name=name,
        path=path,
        digest=digest(raw),
        objective=metric,
        mode=mode,
        constraints=tuple(constraints),
        sampler=sampler,
        seed=seed,
        samples=samples,
        max_concurrent=max_concurrent,
        cpu=cpu,
        gpu=gpu,
        scheduler=scheduler,
        asha=asha,
        fixed=fixed,
        space=space,
        raw=raw,
        report=tuple(report),
        report_plan=plan,
        repeat=repeat,
        pretrain_cache=pretrain_cache,
        objectives=tuple(objectives),
        startup=startup,
        enqueue=enqueue,
        **tpe_options,
    )
    _sanity_build(spec, f)
    return spec


def _sanity_build(spec: StudySpec, f: StudyFile) -> None:
    """Build the fixed keys with the first value of every domain, then move one key at a time to
    each of its other values (both ends of a range): each is a reachable config, so a failure
    here is one a trial would hit hours later."""
    first = {key: d.candidates()[0] for key, d in spec.space.items()}
    cfg.from_flat(
        {**spec.fixed, **active_params(spec, first)},
        source=f.source("fixed with the first value of every domain in space"),
    )
    for key, domain in spec.space.items():
        base = _activating(spec, domain, first)
        if base is None:
            continue
        for value in domain.candidates():
            sampled = {**base, key: value}
            cfg.from_flat(
                {**spec.fixed, **active_params(spec, sampled)},
                source=f.source(
                    f"space.{key} = {cfg.format_value(value)} (other keys at their first value)"
                ),
            )


def _activating(spec: StudySpec, domain: Domain, first: dict[str, Any]) -> dict[str, Any] | None:
    """`first`, with the keys `domain` is conditioned on moved to values that activate it."""
    base = dict(first)
    for key, allowed in domain.when.items():
        if key in spec.space:
            base[key] = allowed[0]
    for key, excluded in domain.when_not.items():
        if key in spec.space and spec.space[key].values:
            base[key] = next((v for v in spec.space[key].values if v not in excluded), base[key])
    present = {**spec.fixed, **active_params(spec, base)}
    return base if domain.key in present else None


# ---------------------------------------------------------------------------------------------
# What a trial gets


def active_params(spec: StudySpec, sampled: Mapping[str, Any]) -> dict[str, Any]:
    """The sampled keys whose domains are active, in file order, with their sampled values.

    Activity is decided in file order, so a key whose condition names an inactive key is
    inactive too. Keys outside the space raise ConfigError; an active key with no value too.
    """
    unknown = [key for key in sampled if key not in spec.space]
    if unknown:
        raise ConfigError(
            f"sampled keys {', '.join(map(repr, unknown))} are not in the space of {spec.path}; "
            f"space keys: {', '.join(spec.space)}"
        )
    present: dict[str, Any] = dict(spec.fixed)
    out: dict[str, Any] = {}
    for key, domain in spec.space.items():
        if not domain.active(present):
            continue
        if key not in sampled:
            raise ConfigError(f"space key {key!r} of {spec.path} is active but was not sampled")
        present[key] = sampled[key]
        out[key] = sampled[key]
    return out


RUN_NAME_LABELS = {"pretrain.dataset": "", "pretrain.translation": "r", "seed": "s"}
"""Short labels in run names: '' shows the value alone (`glyphs`); others `label=value`, or
`s1` for seeds. Keys not listed use their last part (`freeze=none`, `lr=0.001`)."""


def run_name(spec: StudySpec, sampled: Mapping[str, Any], seed: int) -> str:
    """A trial's MLflow run name: its condition in short forms, active keys in file order, then
    its seed (`glyphs r=0.5 freeze=none s1`); the Ray trial id stays in the run's tags."""
    parts = []
    for key, value in active_params(spec, sampled).items():
        if key == "seed":
            continue
        label = RUN_NAME_LABELS.get(key, key.rsplit(".", 1)[-1])
        text = f"{value:.2g}" if isinstance(value, float) else cfg.format_value(value)
        if key == "pretrain.dataset" and value == "none":
            text = "no-pretrain"
        parts.append(f"{label}={text}" if label else text)
    return " ".join([*parts, f"s{seed}"])


GRID_POINT = "grid_point"
"""The one key of a grid study's Ray `param_space`: each trial's {key: value}, in `grid_points`
order (see `sampled_values`)."""


def grid_points(spec: StudySpec) -> list[dict[str, Any]]:
    """A grid study's trials in launch order, each {key: value} in file order: the keys that
    shape pretraining (`cfg.shapes_pretraining`) vary fastest, the others (finetuning) slowest.
    The trials launched together then pretrain different networks, and the finetuning variants
    that follow find theirs in the pretraining cache, instead of two slots pretraining one network
    twice at the start of every seed. (Ray's own grid would vary keys in name order.)"""
    keys = sorted(spec.space, key=lambda k: not cfg.shapes_pretraining(k))
    keys.reverse()  # itertools.product varies its last factor fastest
    combos = itertools.product(*(spec.space[k].values for k in keys))
    points = [dict(zip(keys, combo, strict=True)) for combo in combos]
    return [{k: point[k] for k in spec.space} for point in points]


def sampled_values(config: Mapping[str, Any]) -> dict[str, Any]:
    """The values Ray chose for a trial, flat: a grid trial's `GRID_POINT` unpacked (a study
    launched before grids had one holds them flat already)."""
    flat = {k: v for k, v in config.items() if k != GRID_POINT}
    flat.update(config.get(GRID_POINT, {}))
    return flat


def trial_config(spec: StudySpec, sampled: Mapping[str, Any]) -> TrialConfig:
    """The trial's config: fixed keys, then the active sampled keys; inactive keys keep defaults."""
    return cfg.from_flat({**spec.fixed, **active_params(spec, sampled)}, source=str(spec.path))


__all__ = [
    "Domain",
    "StudySpec",
    "active_params",
    "load_space",
    "run_name",
    "trial_config",
]
