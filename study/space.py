"""Study files: the YAML schema of a search space, its validation, and what Ray and Optuna need.

`load_space` reads and checks a whole study file (objective, constraints, sampler, resources,
fixed keys, domains and their conditions) before anything expensive starts, and returns a frozen
`StudySpec`. From a spec come the Optuna define-by-run function (`define_by_run`), the sampler
(`build_sampler`), the Ray grid (`grid_param_space`) and each trial's `TrialConfig`
(`trial_config`). Keys are the flat dotted keys of `transinv.config`, unchanged end to end.

The Tuner, the trainable and the CLI live elsewhere (`study/tuner.py`, `study/trial.py`,
`study/cli.py`); this module starts nothing and imports Ray only inside `grid_param_space`.

Conditions follow ConfigSpace: a domain is active iff every key its `when` / `when_not` names
is present (fixed, or sampled and itself active) and its value is (is not) in the listed values.
A condition may name only a fixed key or a space key that comes earlier in the file.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import re
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml

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
DOMAIN_KINDS = ("choice", "uniform", "loguniform", "int", "grid")
CONDITIONS = ("when", "when_not")
_DOMAIN_OPTIONS = {"int": ("step", "log")}

NAME_RE = re.compile(r"^[a-z0-9_-]+$")
METRIC_RE = re.compile(rf"^{METRIC_PATTERN}$")

# Enumerated keys whose choices live in transinv.config rather than in a registry.
ENUM_CHOICES: dict[str, tuple[str, ...]] = {
    "finetune.freeze": cfg.FREEZE_MODES,
    "finetune.transfer": cfg.TRANSFER_MODES,
    "pretrain.stop": cfg.STOP_RULES,
    "finetune.stop": cfg.STOP_RULES,
    "eval.schedule": cfg.EVAL_SCHEDULES,
    "run.device": cfg.DEVICES,
}


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


def _plain(value: Any) -> Any:
    """A value Optuna and Ray carry as a scalar: points travel as `x,y` strings."""
    return cfg.format_value(value) if isinstance(value, tuple) else value


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


class _File:
    """Error helper: messages read `<what> in <file>: <yaml.path>; <what would be valid>`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def source(self, where: str) -> str:
        return f"{self.path}: {where}"

    def check(self, ok: Any, where: str, what: str, hint: str = "") -> None:
        if not ok:
            raise ConfigError(f"{what} in {self.path}: {where}" + (f"; {hint}" if hint else ""))

    def mapping(self, value: Any, where: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        if value is None:
            return {}
        keys = f"keys: {', '.join(allowed)}"
        self.check(isinstance(value, dict), where, f"expected a mapping, got {value!r}", keys)
        for key in value:
            at = f"{where}.{key}" if where else str(key)
            self.check(key in allowed, at, f"unknown key {key!r}", f"valid {keys}")
        return value

    def one_of(self, value: Any, where: str, choices: tuple[str, ...]) -> str:
        self.check(value in choices, where, f"unknown value {value!r}", _choose(choices))
        return value

    def integer(self, value: Any, where: str, minimum: int) -> int:
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
        self.check(ok, where, f"bad value {value!r}", f"expected an integer >= {minimum}")
        return value

    def number(self, value: Any, where: str, minimum: float, strict: bool = False) -> float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        ok = ok and math.isfinite(value) and (value > minimum if strict else value >= minimum)
        bound = f"{'>' if strict else '>='} {minimum:g}"
        self.check(ok, where, f"bad value {value!r}", f"expected a number {bound}")
        return float(value)

    def config_key(self, key: Any, where: str) -> str:
        close = difflib.get_close_matches(str(key), cfg.KEY_TYPES, n=1)
        what = f"unknown key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
        self.check(key in cfg.KEY_TYPES, where, what, f"valid keys: {', '.join(cfg.KEY_TYPES)}")
        return key

    def name_in_registry(self, key: str, value: Any, where: str) -> None:
        """Registry and enumerated keys, in config.check_choice's words with our YAML path."""
        choices = _named_choices(key)
        if choices is not None:
            kind = {"model.arch": "architecture"}.get(key, "value")
            self.check(value in choices, where, f"unknown {kind} {value!r}", _choose(choices))


def _choose(choices: Iterable[Any]) -> str:
    return f"choose one of {', '.join(map(cfg.format_value, choices))}"


def _named_choices(key: str) -> list[str] | None:
    # The registering modules fill config._CHOICE_CHECKS on import (config.validate does the same).
    from transinv import models, regimes, sources  # noqa: F401

    if key in cfg._CHOICE_CHECKS:
        return list(cfg._CHOICE_CHECKS[key]())
    return list(ENUM_CHOICES[key]) if key in ENUM_CHOICES else None


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"study file {path} not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"study file {path} is not valid YAML{line}: {problem}") from None
    if not isinstance(raw, dict):
        raise ConfigError(
            f"study file {path} is a {type(raw).__name__}, not a mapping; "
            f"keys: {', '.join(TOP_KEYS)}"
        )
    return raw


def _digest(raw: dict[str, Any]) -> str:
    # Keys sorted so layout does not matter, but the space's order is kept: it is the order in
    # which keys are suggested, so reordering it changes what a resumed sampler would draw.
    space = raw.get("space")
    order = list(space) if isinstance(space, dict) else []
    canonical = json.dumps(
        {"study": raw, "space_order": order}, sort_keys=True, separators=(",", ":"), default=str
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _base_fixed(f: _File, base: Any) -> list[tuple[Path, dict[str, Any]]]:
    """The `fixed` block of the file `base` names (relative to the study file), which holds
    nothing else: a budget shared by several studies."""
    if base is None:
        return []
    f.check(isinstance(base, str) and base, "base", f"bad base {base!r}", "a YAML file name")
    path = (f.path.parent / base).resolve()
    f.check(path.is_file(), "base", f"base file {base!r} not found", f"looked for {path}")
    raw = _read(path)
    _File(path).mapping(raw, "", ("fixed",))
    fixed = raw.get("fixed") or {}
    _File(path).check(isinstance(fixed, dict), "fixed", f"bad fixed {fixed!r}", "{key: value}")
    return [(path, fixed)]


def _domain(
    f: _File,
    key: str,
    spec: Any,
    sampler: str,
    space: dict[str, Domain],
    fixed: dict[str, Any],
    later_keys: tuple[str, ...],
) -> Domain:
    """One space entry; `space` holds the domains before it, `later_keys` the keys after it."""
    where = f"space.{key}"
    kinds = [k for k in spec if k in DOMAIN_KINDS] if isinstance(spec, dict) else []
    f.check(
        len(kinds) == 1,
        where,
        f"expected a domain with one kind, like {{choice: [...]}}, got {spec!r}",
        f"kinds: {', '.join(DOMAIN_KINDS)}",
    )
    kind = kinds[0]
    f.mapping(spec, where, (kind, *_DOMAIN_OPTIONS.get(kind, ()), *CONDITIONS))
    at, body, key_type = f"{where}.{kind}", spec[kind], cfg.KEY_TYPES[key]
    if sampler == "grid":
        f.check(
            kind in ("grid", "choice"),
            where,
            f"{kind} domain with search.sampler grid",
            "the grid sampler needs grid or choice domains",
        )
    else:
        f.check(
            kind != "grid",
            where,
            f"grid domain with search.sampler {sampler}",
            "grid domains need search.sampler: grid; use choice",
        )

    fields_: dict[str, Any] = {}
    if kind in ("choice", "grid"):
        f.check(isinstance(body, list) and body, at, f"empty range {body!r}", "list the values")
        values = tuple(cfg.parse_value(key, v, f.source(at)) for v in body)
        for i, value in enumerate(values):
            f.name_in_registry(key, value, where)
            f.check(value not in values[:i], at, f"duplicate value {body[i]!r}")
        fields_["values"] = values
    else:
        need = int if kind == "int" else float
        use = "int" if key_type is int else "choice"
        f.check(
            key_type is need,
            where,
            f"{kind} domain on {key_type.__name__} key {key!r}",
            f"use {use}",
        )
        pair = isinstance(body, list) and len(body) == 2
        f.check(pair, at, f"bad range {body!r}", "expected [low, high]")
        low, high = (cfg.parse_value(key, v, f.source(at)) for v in body)
        f.check(low < high, at, f"empty range [{low}, {high}]", "need low < high")
        if kind == "loguniform":
            f.check(low > 0, at, f"empty range [{low}, {high}] for loguniform", "need 0 < low")
        fields_.update(low=low, high=high, log=kind == "loguniform")
        if kind == "int":
            step, log = spec.get("step"), spec.get("log", False)
            f.check(isinstance(log, bool), f"{where}.log", f"bad value {log!r}", "true or false")
            if step is not None:
                ok = isinstance(step, int) and not isinstance(step, bool) and step > 0
                f.check(ok, f"{where}.step", f"empty range: step {step!r}", "need an integer >= 1")
                f.check(
                    (high - low) % step == 0,
                    f"{where}.step",
                    f"high - low = {high - low} is not a multiple of step {step}",
                    "change the range or the step",
                )
            f.check(not (log and step not in (None, 1)), where, "step with log: true", "pick one")
            f.check(not log or low >= 1, at, f"log: true with low {low}", "need low >= 1")
            fields_.update(step=step, log=log)

    for cond in (c for c in CONDITIONS if c in spec):
        entries = spec[cond]
        ok = isinstance(entries, dict) and entries
        f.check(ok, f"{where}.{cond}", f"bad {cond} {entries!r}", "{other.key: value or [values]}")
        parsed: dict[str, tuple[Any, ...]] = {}
        for other, listed in entries.items():
            at = f"{where}.{cond}.{other}"
            later = " (it comes later in space: move it above)" if other in later_keys else ""
            f.check(
                other in space or other in fixed,
                at,
                f"{cond} names {other!r}, which is neither fixed nor earlier in space{later}",
                _choose([*fixed, *space]),
            )
            point = cfg.KEY_TYPES[other] == cfg.Point and _is_point(listed)
            listed = listed if isinstance(listed, list) and not point else [listed]
            values = tuple(cfg.parse_value(other, v, f.source(at)) for v in listed)
            possible = (fixed[other],) if other in fixed else space[other].values
            for v in values if possible else ():
                f.check(v in possible, at, f"{cond} value {v!r} never occurs", _choose(possible))
            parsed[other] = values
        fields_[cond] = parsed
    return Domain(key=key, kind=kind, **fields_)


def _is_point(listed: Any) -> bool:
    return (
        isinstance(listed, list)
        and len(listed) == 2
        and all(isinstance(v, int | float) for v in listed)
    )


def load_space(path: str | Path) -> StudySpec:
    """Read and validate a study file; ConfigError names the file, the YAML path and the choices."""
    path = Path(path)
    f = _File(path)
    raw = _read(path)
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
        (_File(b), {k: v for k, v in b_fixed.items() if k not in space_keys})
        for b, b_fixed in _base_fixed(f, raw.get("base"))
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
        space[key] = _domain(f, key, domain, sampler, space, fixed, keys[i:])
    f.check(
        space or sampler == "grid",
        "space",
        f"empty space with search.sampler: {sampler}",
        "to repeat a fixed config use sampler: grid with samples: N",
    )

    spec = StudySpec(
        name=name,
        path=path,
        digest=_digest(raw),
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


def _sanity_build(spec: StudySpec, f: _File) -> None:
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


def constraints_from_user_attrs(trial: optuna.trial.FrozenTrial) -> list[float]:
    """Constraint violations the tuner stored on the trial (<= 0 is feasible; none: feasible)."""
    return list(trial.user_attrs.get("constraints", [0.0]))


def build_sampler(spec: StudySpec) -> optuna.samplers.BaseSampler:
    """The Optuna sampler the spec names, seeded, with constraints read from user attrs."""
    with warnings.catch_warnings():
        # `group` is experimental; `constraints_func` is deprecated in 5.0 (removal in 7.0) in
        # favour of Trial.set_constraint, which Ray's OptunaSearch gives no hook for.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message=".*constraints_func.*", category=FutureWarning)
        if spec.sampler == "tpe":
            return optuna.samplers.TPESampler(
                seed=spec.seed,
                multivariate=True,
                group=True,
                constraints_func=constraints_from_user_attrs,
            )
        if spec.sampler == "gp":
            return optuna.samplers.GPSampler(
                seed=spec.seed, constraints_func=constraints_from_user_attrs
            )
        if spec.sampler == "random":
            return optuna.samplers.RandomSampler(seed=spec.seed)
    raise ConfigError(
        f"{spec.path} uses search.sampler: {spec.sampler}, which has no Optuna sampler; "
        f"Optuna samplers: {', '.join(s for s in SAMPLERS if s != 'grid')}"
    )


def grid_param_space(spec: StudySpec) -> dict[str, Any]:
    """Ray's `param_space` for sampler grid: every space key as `tune.grid_search`."""
    from ray import tune

    if spec.sampler != "grid":
        raise ConfigError(
            f"{spec.path} uses search.sampler: {spec.sampler}; grid_param_space needs grid"
        )
    return {key: tune.grid_search([_plain(v) for v in d.values]) for key, d in spec.space.items()}


__all__ = [
    "Constraint",
    "DefineByRun",
    "Domain",
    "StudySpec",
    "active_params",
    "build_sampler",
    "constraints_from_user_attrs",
    "define_by_run",
    "grid_param_space",
    "load_space",
    "trial_config",
]
