"""Study files: the YAML schema of a search space, its validation, and each trial's config.

`load_space` reads and checks a whole study file (objective, constraints, sampler, resources,
fixed keys, domains and their conditions) before anything expensive starts, and returns a frozen
`StudySpec`; `trial_config` turns a spec and a trial's sampled values into its `TrialConfig`.
Keys are the flat dotted keys of `transinv.config`, unchanged end to end.

Reading the YAML and checking one `space` entry (with the checker whose errors name the file,
the YAML path and the choices) is `study/study_file.py`. What Optuna and Ray make of a spec
(define-by-run space, sampler, grid, searcher, scheduler) is `study/search.py`; the Tuner, the
trainable and the CLI are `tuner.py`, `trial.py` and `cli.py`. This module imports neither Ray
nor Optuna, and starts nothing.

Conditions follow ConfigSpace: a domain is active iff every key its `when` / `when_not` names
is present (fixed, or sampled and itself active) and its value is (is not) in the listed values.
A condition may name only a fixed key or a space key that comes earlier in the file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from study.study_file import StudyFile, base_fixed, digest, domain_fields, read_yaml
from transinv import config as cfg
from transinv.config import ConfigError, TrialConfig
from transinv.constraints import METRIC_PATTERN, Constraint

TOP_KEYS = (
    "study",
    "objective",
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
MODES = ("max", "min")
SAMPLERS = ("tpe", "gp", "random", "grid")
SCHEDULERS = ("fifo", "asha")
NAME_RE = re.compile(r"^[a-z0-9_-]+$")
METRIC_RE = re.compile(rf"^{METRIC_PATTERN}$")


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
    repeat: int = 1
    """Seeds per suggested regime (Optuna samplers): each suggestion runs as `repeat` trials
    with seeds 0..repeat-1 and the searcher is told their mean."""
    pretrain_cache: bool = True
    """Trials share identical pretrainings through `<storage>/pretrain_cache`."""


# ---------------------------------------------------------------------------------------------
# Loading and validation


def load_space(path: str | Path) -> StudySpec:
    """Read and validate a study file; ConfigError names the file, the YAML path and the choices."""
    path = Path(path)
    f = StudyFile(path)
    raw = read_yaml(path, TOP_KEYS)
    f.mapping(raw, "", TOP_KEYS)
    for key in ("study", "objective"):
        f.check(key in raw, key, f"missing {key!r}", "required keys: study, objective")

    name = raw["study"]
    ok = isinstance(name, str) and NAME_RE.match(name)
    f.check(ok, "study", f"bad study name {name!r}", "use lower case letters, digits, _ and -")

    objective = f.mapping(raw["objective"], "objective", ("metric", "mode"))
    for key in ("metric", "mode"):
        f.check(key in objective, f"objective.{key}", "missing", "objective needs metric and mode")
    metric = objective["metric"]
    ok = isinstance(metric, str) and METRIC_RE.match(metric)
    f.check(ok, "objective.metric", f"bad metric {metric!r}", "expected group/quantity[/layer]")
    mode = f.one_of(objective["mode"], "objective.mode", MODES)

    listed = raw.get("constraints") or []
    f.check(
        isinstance(listed, list), "constraints", f"bad constraints {listed!r}", "expected a list"
    )
    constraints = tuple(
        Constraint.parse(c, f.source(f"constraints[{i}]")) for i, c in enumerate(listed)
    )

    search = f.mapping(raw.get("search"), "search", ("sampler", "seed"))
    sampler = f.one_of(search.get("sampler", "tpe"), "search.sampler", SAMPLERS)
    seed = f.integer(search.get("seed", 0), "search.seed", 0)
    f.check(
        "samples" in raw or sampler == "grid",
        "samples",
        "missing number of trials",
        f"required with search.sampler: {sampler}",
    )
    samples = f.integer(raw.get("samples", 1), "samples", 1)
    max_concurrent = f.integer(raw.get("max_concurrent", 1), "max_concurrent", 1)

    resources = f.mapping(raw.get("resources"), "resources", ("cpu", "gpu"))
    cpu = f.number(resources.get("cpu", 1), "resources.cpu", 0.0, strict=True)
    gpu = f.number(resources.get("gpu", 0), "resources.gpu", 0.0)

    scheduler = f.one_of(raw.get("scheduler", "fifo"), "scheduler", SCHEDULERS)
    asha: dict[str, Any] = {}
    ok = "asha" not in raw or scheduler == "asha"
    f.check(ok, "asha", f"asha settings with scheduler {scheduler}", "set scheduler: asha")
    if scheduler == "asha":
        given = f.mapping(raw.get("asha"), "asha", ("grace_period", "reduction_factor", "max_t"))
        f.check("grace_period" in given, "asha.grace_period", "missing", "finetune steps")
        asha["grace_period"] = f.integer(given["grace_period"], "asha.grace_period", 1)
        asha["reduction_factor"] = f.number(
            given.get("reduction_factor", 2), "asha.reduction_factor", 1.0, strict=True
        )
        if "max_t" in given:
            asha["max_t"] = f.integer(given["max_t"], "asha.max_t", asha["grace_period"])

    fixed_raw = raw.get("fixed") or {}
    f.check(isinstance(fixed_raw, dict), "fixed", f"bad fixed {fixed_raw!r}", "{key: value}")
    fixed: dict[str, Any] = {}
    # A base file's keys are defaults: the study's own fixed keys and its space override them.
    space_keys = set(raw.get("space") or {}) if isinstance(raw.get("space"), dict) else set()
    sources = [
        (StudyFile(b), {k: v for k, v in b_fixed.items() if k not in space_keys})
        for b, b_fixed in base_fixed(f, raw.get("base"))
    ]
    for owner, entries in [*sources, (f, fixed_raw)]:
        for key, value in entries.items():
            owner.config_key(key, f"fixed.{key}")
            fixed[key] = cfg.parse_value(key, value, owner.source(f"fixed.{key}"))
            owner.name_in_registry(key, fixed[key], f"fixed.{key}")
    if sources:
        # The digest covers what the study runs, so editing the base file changes it too.
        raw = {**raw, "fixed": {k: cfg.format_value(v) for k, v in fixed.items()}}

    report = raw.get("report") or []
    f.check(isinstance(report, list), "report", f"bad report {report!r}", "a list of analyses")
    from transinv.analyses import ANALYSES

    for i, analysis in enumerate(report):
        f.one_of(analysis, f"report[{i}]", tuple(ANALYSES))
    repeat = f.integer(raw.get("repeat", 1), "repeat", 1)
    if repeat > 1:
        f.check(sampler != "grid", "repeat", "repeat with search.sampler grid", "grid seed instead")
        f.check(
            samples % repeat == 0,
            "samples",
            f"samples {samples} is not a multiple of repeat {repeat}",
            "samples counts trials: suggestions x repeat",
        )
    f.check(
        "seed" not in fixed or repeat == 1, "fixed.seed", "seed fixed with repeat",
        "repeat sets the seeds 0..repeat-1 itself",
    )  # fmt: skip
    pretrain_cache = raw.get("pretrain_cache", True)
    f.check(
        isinstance(pretrain_cache, bool), "pretrain_cache", f"bad value {pretrain_cache!r}",
        "true or false",
    )  # fmt: skip

    space_raw = raw.get("space") or {}
    f.check(isinstance(space_raw, dict), "space", f"bad space {space_raw!r}", "{key: domain}")
    space: dict[str, Domain] = {}
    keys = tuple(space_raw)
    for i, (key, domain) in enumerate(space_raw.items()):
        f.config_key(key, f"space.{key}")
        f.check(key not in fixed, f"space.{key}", f"{key!r} is both fixed and in space", "keep one")
        f.check(
            key != "seed" or repeat == 1,
            "space.seed",
            "seed in space with repeat",
            "repeat sets the seeds 0..repeat-1 itself",
        )
        space[key] = Domain(**domain_fields(f, key, domain, sampler, space, fixed, keys[i:]))
    f.check(
        space or sampler == "grid",
        "space",
        f"empty space with search.sampler: {sampler}",
        "to repeat a fixed config use sampler: grid with samples: N",
    )

    spec = StudySpec(
        name=name,
        path=path,
        digest=digest(raw),
        objective=metric,
        mode=mode,
        constraints=constraints,
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
        repeat=repeat,
        pretrain_cache=pretrain_cache,
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


def trial_config(spec: StudySpec, sampled: Mapping[str, Any]) -> TrialConfig:
    """The trial's config: fixed keys, then the active sampled keys; inactive keys keep defaults."""
    return cfg.from_flat({**spec.fixed, **active_params(spec, sampled)}, source=str(spec.path))


__all__ = [
    "Domain",
    "StudySpec",
    "active_params",
    "load_space",
    "trial_config",
]
