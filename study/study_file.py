"""Reading one study file: its YAML, its `base:` file, its digest, and `StudyFile`, the checker
whose ConfigErrors name the file, the YAML path and the valid choices; the check of one
`space` entry (a domain and its `when` / `when_not` conditions) into `space.Domain`'s fields;
and the checks of the top-level entries that say how a study searches and runs (objectives,
constraints, search, resources, scheduler, repeat).

The study file's top-level schema, `StudySpec` and what conditions mean are `space.py`.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import re
from collections.abc import Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from transinv import config as cfg
from transinv.config import ConfigError
from transinv.constraints import METRIC_PATTERN, Constraint

DOMAIN_KINDS = ("choice", "uniform", "loguniform", "int", "grid")
CONDITIONS = ("when", "when_not")
_DOMAIN_OPTIONS = {"int": ("step", "log")}
MODES = ("max", "min")
SAMPLERS = ("tpe", "gp", "nsga2", "random", "grid")
SEARCH_KEYS = ("sampler", "seed", "startup", "multivariate", "constant_liar", "enqueue")
STARTUP_SAMPLERS = ("tpe", "gp", "nsga2")
"""Samplers with a random start: `startup` is n_startup_trials (tpe, gp), population_size
(nsga2: its first generation is random)."""
SCHEDULERS = ("fifo", "asha")
METRIC_RE = re.compile(rf"^{METRIC_PATTERN}$")


class StudyFile:
    """Error helper: messages read `<what> in <file>: <yaml.path>; <what would be valid>`.

    Problems are collected, not raised one at a time: each entry is checked inside `entry()`,
    which notes its ConfigError and goes on, and `raise_problems()` raises them all as one
    ConfigError, so a user fixes a file in one pass. Checkers of the files a study file names
    (`base:`) share its list through `other()`.
    """

    def __init__(self, path: Path, problems: list[str] | None = None) -> None:
        self.path = path
        self.problems: list[str] = [] if problems is None else problems

    def other(self, path: Path) -> StudyFile:
        """A checker for another file whose problems are reported with this one's."""
        return StudyFile(path, self.problems)

    @contextmanager
    def entry(self) -> Iterator[None]:
        """Check one entry: its first problem is noted and checking goes on after the block."""
        try:
            yield
        except ConfigError as exc:
            self.problems.append(str(exc))

    def raise_problems(self) -> None:
        """One ConfigError listing every problem noted, each naming its file and entry."""
        if len(self.problems) == 1:
            raise ConfigError(self.problems[0])
        if self.problems:
            listed = "\n".join(f"  - {p}" for p in self.problems)
            raise ConfigError(f"{len(self.problems)} problems in {self.path}:\n{listed}")

    def source(self, where: str) -> str:
        return f"{self.path}: {where}"

    def check(self, ok: Any, where: str, what: str, hint: str = "") -> None:
        if not ok:
            raise ConfigError(f"{what} in {self.path}: {where}" + (f"; {hint}" if hint else ""))

    def mapping(self, value: Any, where: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        """`value` as a mapping of `allowed` keys; each unknown key is noted as a problem (with
        the closest allowed key) and left out, so the known ones are still checked."""
        if value is None:
            return {}
        keys = f"keys: {', '.join(allowed)}"
        self.check(isinstance(value, dict), where, f"expected a mapping, got {value!r}", keys)
        for key in value:
            if key not in allowed:
                at = f"{where}.{key}" if where else str(key)
                with self.entry():
                    self.check(False, at, unknown_key(key, allowed), f"valid {keys}")
        return {k: v for k, v in value.items() if k in allowed}

    def one_of(self, value: Any, where: str, choices: tuple[str, ...]) -> str:
        self.check(value in choices, where, f"unknown value {value!r}", choose(choices))
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
        what = unknown_key(key, cfg.KEY_TYPES)
        self.check(key in cfg.KEY_TYPES, where, what, f"valid keys: {', '.join(cfg.KEY_TYPES)}")
        return key

    def name_in_registry(self, key: str, value: Any, where: str) -> None:
        """Keys declared with choices (plain or a registry's), in config.check_choice's words
        with our YAML path."""
        choices = cfg.choices_for(key)
        if choices is not None:
            kind = cfg.choice_kind(key)
            self.check(value in choices, where, f"unknown {kind} {value!r}", choose(choices))


def unknown_key(key: Any, allowed: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(key), list(allowed), n=1)
    return f"unknown key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else "")


def choose(choices: Iterable[Any]) -> str:
    return f"choose one of {', '.join(map(cfg.format_value, choices))}"


def read_yaml(path: Path, keys: tuple[str, ...]) -> dict[str, Any]:
    """The file as a mapping; ConfigError if missing, not YAML, or not a mapping (of `keys`)."""
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
            f"study file {path} is a {type(raw).__name__}, not a mapping; keys: {', '.join(keys)}"
        )
    return raw


def digest(raw: dict[str, Any]) -> str:
    # Keys sorted so layout does not matter, but the space's order is kept: it is the order in
    # which keys are suggested, so reordering it changes what a resumed sampler would draw.
    space = raw.get("space")
    order = list(space) if isinstance(space, dict) else []
    canonical = json.dumps(
        {"study": raw, "space_order": order}, sort_keys=True, separators=(",", ":"), default=str
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def base_fixed(f: StudyFile, base: Any) -> list[tuple[Path, dict[str, Any]]]:
    """The `fixed` block of the file `base` names (relative to the study file), which holds
    nothing else: a budget shared by several studies."""
    if base is None:
        return []
    f.check(isinstance(base, str) and base, "base", f"bad base {base!r}", "a YAML file name")
    path = (f.path.parent / base).resolve()
    f.check(path.is_file(), "base", f"base file {base!r} not found", f"looked for {path}")
    raw = read_yaml(path, ("fixed",))
    f.other(path).mapping(raw, "", ("fixed",))
    fixed = raw.get("fixed") or {}
    f.other(path).check(isinstance(fixed, dict), "fixed", f"bad fixed {fixed!r}", "{key: value}")
    return [(path, fixed)]


def domain_fields(
    f: StudyFile,
    key: str,
    spec: Any,
    sampler: str,
    space: Mapping[str, Any],
    fixed: dict[str, Any],
    later_keys: tuple[str, ...],
    broken: Collection[str] = (),
) -> dict[str, Any]:
    """One space entry as the fields of a `space.Domain`; `space` holds the domains before it,
    `later_keys` the keys after it, `broken` the keys whose own entries have problems (a
    condition naming one is not checked further: its problem is reported already)."""
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
            if other in broken:
                continue
            at = f"{where}.{cond}.{other}"
            later = " (it comes later in space: move it above)" if other in later_keys else ""
            f.check(
                other in space or other in fixed,
                at,
                f"{cond} names {other!r}, which is neither fixed nor earlier in space{later}",
                choose([*fixed, *space]),
            )
            point = cfg.KEY_TYPES[other] == cfg.Point and _is_point(listed)
            listed = listed if isinstance(listed, list) and not point else [listed]
            values = tuple(cfg.parse_value(other, v, f.source(at)) for v in listed)
            possible = (fixed[other],) if other in fixed else space[other].values
            for v in values if possible else ():
                f.check(v in possible, at, f"{cond} value {v!r} never occurs", choose(possible))
            parsed[other] = values
        fields_[cond] = parsed
    return dict(key=key, kind=kind, **fields_)


def _is_point(listed: Any) -> bool:
    return (
        isinstance(listed, list)
        and len(listed) == 2
        and all(isinstance(v, int | float) for v in listed)
    )


# -- the top-level entries that say how a study searches and runs ---------------------------------


def objectives_entry(f: StudyFile, raw: Mapping[str, Any]) -> list[tuple[str, str]]:
    """`objective: {metric, mode}` or `objectives: [two or more of them]` as (metric, mode)s."""
    objectives = [("", "max")]
    with f.entry():
        given = [k for k in ("objective", "objectives") if k in raw]
        f.check(
            len(given) == 1,
            "objective",
            "missing 'objective'" if not given else "both objective and objectives",
            "required keys: study, objective (or objectives: a list of them)",
        )
        if "objective" in raw:
            objectives = [_objective(f, raw["objective"], "objective")]
        else:
            listed = raw["objectives"]
            ok = isinstance(listed, list) and len(listed) >= 2
            hint = "a list of two or more {metric: M, mode: max|min}; one is `objective:`"
            f.check(ok, "objectives", f"bad objectives {listed!r}", hint)
            objectives = [_objective(f, o, f"objectives[{i}]") for i, o in enumerate(listed)]
            metrics = [m for m, _ in objectives]
            f.check(len(set(metrics)) == len(metrics), "objectives", "a metric listed twice")
    return objectives


def _objective(f: StudyFile, value: Any, where: str) -> tuple[str, str]:
    """One `{metric: M, mode: max|min}` entry as (metric, mode)."""
    objective = f.mapping(value, where, ("metric", "mode"))
    for key in ("metric", "mode"):
        f.check(key in objective, f"{where}.{key}", "missing", f"{where} needs metric and mode")
    metric = objective["metric"]
    ok = isinstance(metric, str) and METRIC_RE.match(metric)
    f.check(ok, f"{where}.metric", f"bad metric {metric!r}", "expected group/quantity[/layer]")
    return metric, f.one_of(objective["mode"], f"{where}.mode", MODES)


def search_entry(
    f: StudyFile, raw: Mapping[str, Any]
) -> tuple[str, int, int | None, dict[str, bool]]:
    """`search:` as (sampler, seed, startup, TPE options)."""
    sampler, seed, startup = "tpe", 0, None
    tpe_options: dict[str, bool] = {}
    with f.entry():
        search = f.mapping(raw.get("search"), "search", SEARCH_KEYS)
        with f.entry():
            sampler = f.one_of(search.get("sampler", "tpe"), "search.sampler", SAMPLERS)
        with f.entry():
            seed = f.integer(search.get("seed", 0), "search.seed", 0)
        with f.entry():
            if "startup" in search:
                ok = sampler in STARTUP_SAMPLERS
                hint = f"only with sampler {', '.join(STARTUP_SAMPLERS)}"
                f.check(ok, "search.startup", f"startup with sampler {sampler}", hint)
                # NSGA-II's population (its random first generation) needs two parents.
                low = 2 if sampler == "nsga2" else 1
                startup = f.integer(search["startup"], "search.startup", low)
        for option in ("multivariate", "constant_liar"):
            with f.entry():
                if option in search:
                    at = f"search.{option}"
                    f.check(sampler == "tpe", at, f"{option} with sampler {sampler}", "tpe only")
                    value = search[option]
                    f.check(isinstance(value, bool), at, f"bad value {value!r}", "true or false")
                    tpe_options[option] = value
        with f.entry():
            hint = "a grid runs every point of its space already"
            ok = "enqueue" not in search or sampler != "grid"
            f.check(ok, "search.enqueue", "enqueue with sampler grid", hint)
    return sampler, seed, startup, tpe_options


def enqueue_entry(
    f: StudyFile,
    raw: Mapping[str, Any],
    space: Mapping[str, Any],
    fixed: Mapping[str, Any],
    suggestions: int,
) -> tuple[dict[str, Any], ...]:
    """`search.enqueue`: regimes the searcher suggests first, before its own (Optuna's
    `enqueue_trial`), as typed points. `space` holds the `space.Domain`s: each point gives every
    key that is sampled under it (its conditions met) a value in its domain, and nothing else."""
    search = raw.get("search")
    listed = search.get("enqueue") if isinstance(search, dict) else None
    if listed is None:
        return ()
    points: list[dict[str, Any]] = []
    with f.entry():
        hint = "a list of points of the space, each {key: value}"
        f.check(isinstance(listed, list) and listed, "search.enqueue", f"bad {listed!r}", hint)
        f.check(
            len(listed) <= suggestions,
            "search.enqueue",
            f"{len(listed)} points for {suggestions} suggestions",
            "enqueue at most samples / repeat points",
        )
        for i, given in enumerate(listed):
            where = f"search.enqueue[{i}]"
            with f.entry():
                given = f.mapping(given, where, tuple(space))
                present, point = dict(fixed), {}
                for key, domain in space.items():
                    at = f"{where}.{key}"
                    if not domain.active(present):
                        hint = "leave it out: its when/when_not condition is not met here"
                        f.check(key not in given, at, f"{key!r} is not sampled at this point", hint)
                        continue
                    f.check(key in given, where, f"missing {key!r}", "give every sampled key")
                    value = cfg.parse_value(key, given[key], f.source(at))
                    ok = domain.contains(value)
                    f.check(ok, at, f"{value!r} is outside the space", domain.bounds())
                    present[key] = point[key] = value
                points.append(point)
    return tuple(points)


def resources_entry(f: StudyFile, raw: Mapping[str, Any]) -> tuple[float, float]:
    """`resources: {cpu, gpu}` of one trial."""
    cpu, gpu = 1.0, 0.0
    with f.entry():
        resources = f.mapping(raw.get("resources"), "resources", ("cpu", "gpu"))
        with f.entry():
            cpu = f.number(resources.get("cpu", 1), "resources.cpu", 0.0, strict=True)
        gpu = f.number(resources.get("gpu", 0), "resources.gpu", 0.0)

    return cpu, gpu


def scheduler_entry(f: StudyFile, raw: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """`scheduler:` and its `asha:` settings."""
    scheduler = "fifo"
    asha: dict[str, Any] = {}
    with f.entry():
        scheduler = f.one_of(raw.get("scheduler", "fifo"), "scheduler", SCHEDULERS)
    with f.entry():
        ok = "asha" not in raw or scheduler == "asha"
        f.check(ok, "asha", f"asha settings with scheduler {scheduler}", "set scheduler: asha")
        if scheduler == "asha":
            given = f.mapping(
                raw.get("asha"), "asha", ("grace_period", "reduction_factor", "max_t")
            )
            f.check("grace_period" in given, "asha.grace_period", "missing", "finetune steps")
            asha["grace_period"] = f.integer(given["grace_period"], "asha.grace_period", 1)
            asha["reduction_factor"] = f.number(
                given.get("reduction_factor", 2), "asha.reduction_factor", 1.0, strict=True
            )
            if "max_t" in given:
                asha["max_t"] = f.integer(given["max_t"], "asha.max_t", asha["grace_period"])
    return scheduler, asha


def constraints_entry(f: StudyFile, raw: Mapping[str, Any]) -> list[Constraint]:
    """`constraints: ["metric op value", ...]` in the one grammar of `transinv.constraints`."""
    listed = raw.get("constraints") or []
    constraints: list[Constraint] = []
    with f.entry():
        ok = isinstance(listed, list)
        f.check(ok, "constraints", f"bad constraints {listed!r}", "expected a list")
        for i, c in enumerate(listed):
            with f.entry():
                constraints.append(Constraint.parse(c, f.source(f"constraints[{i}]")))
    return constraints


def repeat_entry(
    f: StudyFile, raw: Mapping[str, Any], sampler: str, samples: int, fixed: Mapping[str, Any]
) -> int:
    """`repeat: N`: each Optuna suggestion runs with seeds 0..N-1."""
    repeat = 1
    with f.entry():
        repeat = f.integer(raw.get("repeat", 1), "repeat", 1)
        if repeat > 1:
            hint = "grid seed instead"
            f.check(sampler != "grid", "repeat", "repeat with search.sampler grid", hint)
            f.check(
                samples % repeat == 0,
                "samples",
                f"samples {samples} is not a multiple of repeat {repeat}",
                "samples counts trials: suggestions x repeat",
            )
    with f.entry():
        f.check(
            "seed" not in fixed or repeat == 1, "fixed.seed", "seed fixed with repeat",
            "repeat sets the seeds 0..repeat-1 itself",
        )  # fmt: skip
    return repeat
