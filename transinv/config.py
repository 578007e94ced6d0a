"""One typed trial configuration: every key declared once, its defaults, its flat dotted-key form.

`TrialConfig` is a tree of frozen dataclasses. Each leaf field is declared with `key(...)`: its
default, its doc, and its domain (bounds, plain choices, or the registry it names). Everything
that needs a key's domain reads that one declaration: `validate`, `describe` (`python -m transinv
--keys`), `choices_for` (the YAML validator in `study/space.py`) and the README test. The flat
form (`to_flat` / `from_flat`) uses dotted keys (`model.arch`, `pretrain.translation`) that are
spelled the same in YAML search spaces, Ray trial configs, MLflow params and pandas columns.

This module is the ground floor: of the project it imports only `choices` (the registries, which
import nothing of ours), so it loads without torch. Validation checks types, then each key's
bounds and plain choices, then the few rules across keys (`CROSS_KEY_RULES`), and registry names
last: reading a registry imports the module that fills it (models need torch).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import Field, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, get_type_hints

from transinv.choices import MODELS, REGIMES, SOURCES, Registry


class ConfigError(ValueError):
    """A bad configuration value: the message names the key, where it came from, and the choices."""


Point = tuple[float, float]
"""A canvas position (x, y) as fractions of the canvas side."""


@dataclass(frozen=True)
class Bounds:
    """A closed, open or half-open interval; either end may be absent."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def holds(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"in {left}{self.low:g}, {self.high:g}{right}"


def at_least(low: float) -> Bounds:
    return Bounds(low)


def above(low: float) -> Bounds:
    return Bounds(low, low_open=True)


def interval(text: str) -> Bounds:
    """`"[0, 1]"`, `"(0, 1]"`, `"[0, 1)"` as Bounds."""
    m = re.fullmatch(r"([\[(])\s*([^,\s]+)\s*,\s*([^\]\s)]+)\s*([\])])", text)
    if not m:
        raise ValueError(f"not an interval: {text!r}")
    return Bounds(float(m[2]), float(m[3]), m[1] == "(", m[4] == ")")


UNIT = interval("[0, 1]")


@dataclass(frozen=True)
class KeySpec:
    """What one declaration says of a key (read by validation, `--keys` and study files)."""

    doc: str = ""
    bounds: Bounds | None = None
    """For a point, the bounds of each coordinate."""
    choices: tuple[Any, ...] | Registry | None = None
    """Plain values, or the registry whose names the key takes."""
    special: tuple[str, ...] = ()
    """Values a registry key also takes that are not entries (`none`, `imagenet`)."""


def key(
    default: Any,
    doc: str = "",
    *,
    bounds: Bounds | None = None,
    choices: tuple[Any, ...] | Registry | None = None,
    special: tuple[str, ...] = (),
) -> Any:
    """A dataclass field declaring a key's default, doc and domain, once."""
    spec = KeySpec(doc, bounds, choices, special)
    return field(default=default, metadata={"key": spec})


# Plain choices, named because code elsewhere branches on them.
PRETRAIN_SPECIAL = ("none", "imagenet")
FREEZE_MODES = ("none", "conv", "fc", "all_but_head")
TRANSFER_MODES = ("all", "scramble_fc", "scramble_conv")
STOP_RULES = ("fixed", "goal")
EVAL_SCHEDULES = ("linear", "log")
DEVICES = ("auto", "cpu", "cuda")
HEATMAPS = ("every", "ends", "none")
ANTIALIAS = ("none", "blur", "aps")
"""`model.antialias`: none, BlurPool (Zhang 2019), adaptive polyphase sampling (Chaman &
Dokmanic 2021); built by `transinv/antialias.py`."""
PADDINGS = ("zeros", "circular")
BLUR_SIZES = (3, 5)
"""`model.blur_size`: binomial filters [1, 2, 1] and [1, 4, 6, 4, 1]."""


@dataclass(frozen=True)
class CanvasConfig:
    size: int = key(64, "Canvas side in pixels.", bounds=at_least(32))
    item_size: int = key(
        16, "Item side in pixels (the paper's 50/224 ratio at 64 px).", bounds=at_least(2)
    )
    channels: int = key(
        1, "1 (grey) or 3 (grey replicated to RGB, needed for ImageNet weights).", choices=(1, 3)
    )
    normalize: bool = key(
        True, "Normalise each dataset's canvases by their own pixel mean and std."
    )


@dataclass(frozen=True)
class DataConfig:
    seed: int = key(
        0,
        "Seed of the stimuli (glyph classes, exemplar pins, held-out split). Kept apart from "
        "`seed` so that replicates vary training, not stimuli.",
    )
    root: str = key(
        "",
        "Folder holding MNIST/, FashionMNIST/ and omniglot/. Empty: $TRANSINV_DATA, else "
        "../shared/data beside the project when it exists.",
    )
    download: bool = key(
        False,
        "Let torchvision download MNIST/FashionMNIST into `root` when absent (needs internet).",
    )


@dataclass(frozen=True)
class ModelConfig:
    arch: str = key(
        "small_cnn", "The network (`--list` shows each with its facts).", choices=MODELS
    )
    antialias: str = key(
        "none",
        "Shift-aware down-sampling in every strided pool and conv: `none`, `blur` (BlurPool, "
        "Zhang 2019) or `aps` (adaptive polyphase sampling, Chaman & Dokmanic 2021; with "
        "circular padding and a GAP head exactly invariant to circular shifts).",
        choices=ANTIALIAS,
    )
    blur_size: int = key(3, "Side of the binomial filter of `blur`.", choices=BLUR_SIZES)
    padding: str = key(
        "zeros",
        "Padding of every padded conv (and rebuilt pool): `zeros` or `circular`.",
        choices=PADDINGS,
    )


@dataclass(frozen=True)
class PretrainConfig:
    dataset: str = key(
        "glyphs",
        "An item source, `none` (vanilla: no pretraining) or `imagenet` (torchvision weights).",
        choices=SOURCES,
        special=PRETRAIN_SPECIAL,
    )
    regime: str = key("whole", "Where pretraining items are placed.", choices=REGIMES)
    translation: float = key(
        1.0,
        "Translation range r for regime `translation`: centres uniform in a box of side r * |V| "
        "around `location` (r=0 one location, r=1 `whole`).",
        bounds=UNIT,
    )
    location: Point = key(
        (0.5, 0.5),
        "The point of regime `location` and the box centre of regime `translation`.",
        bounds=UNIT,
    )
    class_regimes: str = key(
        "",
        "Per-class regimes, `class=regime` pairs separated by commas (`0=left,1=right`); classes "
        "not listed follow `regime`.",
    )
    classes: int = key(
        0,
        "Number of classes drawn from the source (a seeded subset for real datasets); 0 = the "
        "source's default.",
        bounds=at_least(0),
    )
    steps: int = key(
        3000, "Pretraining steps (the cap under stop rule `goal`).", bounds=at_least(0)
    )
    stop: str = key(
        "fixed",
        "`fixed`: run `steps` steps. `goal`: the authors' rule, capped at `steps`.",
        choices=STOP_RULES,
    )


@dataclass(frozen=True)
class FinetuneConfig:
    dataset: str = key("glyphs_b", "The item source learned at one location.", choices=SOURCES)
    location: Point = key((0.25, 0.5), "Where finetuning items are placed.", bounds=UNIT)
    classes: int = key(0, "As `pretrain.classes`, for the finetuning set.", bounds=at_least(0))
    steps: int = key(1000, "Finetuning steps (the cap under stop rule `goal`).", bounds=at_least(0))
    lr: float = key(
        0.0,
        "Finetuning learning rate; 0 = `optim.lr` (so a study can vary it without changing the "
        "pretraining).",
        bounds=at_least(0),
    )
    freeze: str = key(
        "none",
        "`none`, `conv` (conv layers frozen), `fc` (hidden FC layers frozen), `all_but_head`.",
        choices=FREEZE_MODES,
    )
    transfer: str = key(
        "all",
        "What pretraining hands on: `all`, `scramble_fc` (classifier re-initialised) or "
        "`scramble_conv` (conv layers re-initialised).",
        choices=TRANSFER_MODES,
    )
    stop: str = key("fixed", "As `pretrain.stop`.", choices=STOP_RULES)


@dataclass(frozen=True)
class OptimConfig:
    lr: float = key(1e-3, "Adam learning rate.", bounds=above(0))
    batch_size: int = key(64, "Canvases per step.", bounds=at_least(1))


@dataclass(frozen=True)
class StopConfig:
    """The authors' stopping rule, used by phases whose `stop` is `goal`."""

    goal: float = key(0.75, "Running train accuracy to hold.", bounds=interval("(0, 1]"))
    window: int = key(100, "Steps in the running accuracy and loss windows.", bounds=at_least(1))
    patience: int = key(
        800,
        "Steps the goal must hold, or the running loss may stagnate, before stopping.",
        bounds=at_least(1),
    )


@dataclass(frozen=True)
class EvalConfig:
    every: int = key(100, "Evaluate every this many steps (schedule `linear`).", bounds=at_least(1))
    schedule: str = key(
        "linear",
        "`linear` (0, every, 2*every, ...) or `log` (log-spaced, so forgetting curves have early "
        "points), plus the last step either way.",
        choices=EVAL_SCHEDULES,
    )
    points: int = key(
        12, "Number of log-spaced evaluations per phase (schedule `log`).", bounds=at_least(2)
    )
    grid_step: float = key(
        0.0625,
        "Spacing of the test grid of centres, as a canvas fraction (4 px at 64 px).",
        bounds=interval("(0, 1]"),
    )
    grid_offset: float = key(
        0.0,
        "Shift of the test grid from the low edge of the valid range, as a canvas fraction.",
        bounds=interval("[0, 1)"),
    )
    items: int = key(
        64, "Held-out items of the finetuning set placed at every grid centre.", bounds=at_least(2)
    )
    pretrain_items: int = key(
        256,
        "Held-out items of the pretraining set for its accuracy (and forgetting of it).",
        bounds=at_least(1),
    )
    nway: int = key(
        5,
        "N of `invariance/nway/<layer>`: the same item among N - 1 other classes' items; "
        "chance 1 / N (at most the number of finetuning classes).",
        bounds=at_least(2),
    )
    shift_centres: int = key(
        2,
        "Untrained grid centres (spread evenly over them) where `finetune/jaggedness_untrained` "
        "and `invariance/nway/<layer>` are measured; each costs 5 x `eval.items` canvases.",
        bounds=at_least(1),
    )


@dataclass(frozen=True)
class RunConfig:
    device: str = key("auto", "`auto` (CUDA when available), `cpu` or `cuda`.", choices=DEVICES)
    threads: int = key(
        0, "Torch intra-op threads; 0 = the CPUs this process may use.", bounds=at_least(0)
    )
    pretrain_cache: str = key(
        "",
        "Folder of pretrained networks shared between trials (`transinv/pretrain_cache.py`): a "
        "trial whose pretraining matches a stored one finetunes from it. Empty = off.",
    )
    tracking_outage_s: float = key(
        600.0,
        "Seconds a trial keeps training while the MLflow server is unreachable, holding what it "
        "could not deliver; after that the study stops resumably (rerun it once the server is "
        "back).",
        bounds=above(0),
    )
    heatmaps: str = key(
        "every",
        "Rendered maps in each trial's MLflow artifacts (`heatmaps/<key>/`): `every` (accuracy "
        "at every evaluation, G per layer at a phase's first and last), `ends` (every grid at a "
        "phase's first and last evaluation only) or `none`. Each map costs the trial ~0.25 s "
        "of CPU; the last evaluation's grids are in `final_grid.json` either way.",
        choices=HEATMAPS,
    )


@dataclass(frozen=True)
class TrialConfig:
    seed: int = key(0, "Training seed: weights, sampling order, dropout.")
    canvas: CanvasConfig = field(default_factory=CanvasConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    stop: StopConfig = field(default_factory=StopConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)


def _leaves(cls: type = TrialConfig, prefix: str = "") -> dict[str, tuple[Any, Field]]:
    hints = get_type_hints(cls, globals())
    out: dict[str, tuple[Any, Field]] = {}
    for f in fields(cls):
        t = hints[f.name]
        if isinstance(t, type) and is_dataclass(t):
            out.update(_leaves(t, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = (t, f)
    return out


_LEAVES = _leaves()
KEY_TYPES: dict[str, Any] = {k: t for k, (t, _) in _LEAVES.items()}
"""Every flat key with its type, in declaration order."""
KEYS: dict[str, KeySpec] = {k: f.metadata["key"] for k, (_, f) in _LEAVES.items()}
"""Every flat key with its declaration (doc, bounds, choices), in declaration order."""


def shapes_training(key_: str) -> bool:
    """Whether a flat key can change what a trial computes: every key but `run.*` (where and how
    fast it runs, what it draws). A checkpoint resumes under a config that differs in `run.*`
    only, so a study checkpointed before a `run.*` key existed resumes."""
    return not key_.startswith("run.")


def shapes_pretraining(key_: str) -> bool:
    """Whether a flat key can change a trial's pretraining: every key but finetuning's and `run.*`
    (where and how fast a trial runs). The pretraining cache keys on these; a grid varies them
    first."""
    return shapes_training(key_) and not key_.startswith("finetune.")


def to_flat(config: TrialConfig) -> dict[str, Any]:
    """The flat dotted-key form: `{"seed": 0, "canvas.size": 64, ...}`."""
    out: dict[str, Any] = {}

    def walk(obj: Any, prefix: str) -> None:
        for f in fields(obj):
            value = getattr(obj, f.name)
            if is_dataclass(value):
                walk(value, f"{prefix}{f.name}.")
            else:
                out[f"{prefix}{f.name}"] = value

    walk(config, "")
    return out


def format_value(value: Any) -> str:
    """A value as a flat string (MLflow param, CLI override): points become `x,y`."""
    if isinstance(value, tuple):
        return ",".join(format_value(v) for v in value)
    return str(value)


def _where(source: str) -> str:
    return f" in {source}" if source else ""


def parse_value(key: str, raw: Any, source: str = "") -> Any:
    """`raw` (a YAML/JSON value or a CLI string) converted to the type of `key`."""
    if key not in KEY_TYPES:
        raise ConfigError(
            f"unknown key {key!r}{_where(source)}; valid keys: {', '.join(KEY_TYPES)}"
        )
    kind = KEY_TYPES[key]
    bad = ConfigError(f"bad value {raw!r} for {key!r}{_where(source)}: expected {_type_name(kind)}")
    try:
        if kind is bool:
            if isinstance(raw, bool):
                return raw
            if isinstance(raw, str) and raw.lower() in ("true", "false", "1", "0", "yes", "no"):
                return raw.lower() in ("true", "1", "yes")
            if isinstance(raw, int) and raw in (0, 1):
                return bool(raw)
            raise bad
        if kind is int:
            if isinstance(raw, bool):
                raise bad
            if isinstance(raw, float):
                if not raw.is_integer():
                    raise bad
                return int(raw)
            return int(raw)
        if kind is float:
            if isinstance(raw, bool):
                raise bad
            value = float(raw)
            if not math.isfinite(value):
                raise bad
            return value
        if kind is str:
            if not isinstance(raw, str | int | float) or isinstance(raw, bool):
                raise bad
            return str(raw)
        if kind == Point:
            parts = raw.split(",") if isinstance(raw, str) else list(raw)
            if len(parts) != 2:
                raise bad
            return (float(parts[0]), float(parts[1]))
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise bad from None
    raise AssertionError(f"no parser for {key}: {kind}")


def _type_name(kind: Any) -> str:
    if kind == Point:
        return "a point x,y of canvas fractions"
    return {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}[
        kind
    ]


def from_flat(
    flat: Mapping[str, Any], base: TrialConfig | None = None, source: str = ""
) -> TrialConfig:
    """A validated config from flat overrides on top of `base` (the defaults when None).

    Raises ConfigError naming the first bad key.
    """
    config = base or TrialConfig()
    groups: dict[str, dict[str, Any]] = {}
    top: dict[str, Any] = {}
    for key_, raw in flat.items():
        value = parse_value(key_, raw, source)
        if "." in key_:
            group, name = key_.split(".", 1)
            groups.setdefault(group, {})[name] = value
        else:
            top[key_] = value
    for group, values in groups.items():
        top[group] = replace(getattr(config, group), **values)
    config = replace(config, **top)
    validate(config, source)
    return config


def parse_overrides(args: Iterable[str], source: str = "command line") -> dict[str, str]:
    """`["model.arch=small_cnn", ...]` as a dict; each item must be `key=value`."""
    out: dict[str, str] = {}
    for arg in args:
        key_, sep, value = arg.partition("=")
        if not sep or not key_:
            raise ConfigError(f"override {arg!r} on the {source} is not key=value")
        out[key_.strip()] = value.strip()
    return out


# --------------------------------------------------------------------------------------------
# Domains: what each declaration allows


def choices_for(key_: str) -> tuple[Any, ...] | None:
    """The values `key_` may take, or None when it is not a choice (a number, a free string).

    A registry key reads its registry (importing the module that fills it) after its special
    values; raises ConfigError when that module cannot be imported.
    """
    spec = KEYS[key_]
    if isinstance(spec.choices, Registry):
        return (*spec.special, *registry_names(key_, spec.choices))
    return spec.choices


def registry_names(key_: str, registry: Registry) -> list[str]:
    """`registry`'s names; ConfigError (not ImportError) when its owner module cannot load."""
    try:
        return registry.names()
    except ImportError as exc:
        raise ConfigError(
            f"the registry for {key_} needs {registry.owner}, which cannot be imported: {exc}"
        ) from exc


def choice_kind(key_: str) -> str:
    """What a value of `key_` is called in errors: the registry's kind, else `value`."""
    choices = KEYS[key_].choices if key_ in KEYS else None
    return choices.kind if isinstance(choices, Registry) else "value"


def check_choice(
    key_: str, value: Any, choices: Iterable[Any], source: str = "", kind: str = ""
) -> None:
    """ConfigError unless `value` is one of `choices`, in the words every caller uses."""
    choices = list(choices)
    if value not in choices:
        kind = kind or choice_kind(key_)
        raise ConfigError(
            f"unknown {kind} {value!r}{_where(source)}: {key_}; "
            f"choose one of {', '.join(map(format_value, choices))}"
        )


def class_regime_pairs(text: str, source: str = "") -> dict[int, str]:
    """`"0=left,3=right"` as {0: "left", 3: "right"}, names unchecked (`regimes` checks them);
    raises ConfigError naming the bad pair."""
    out: dict[int, str] = {}
    for pair in filter(None, (s.strip() for s in text.split(","))):
        cls, sep, name = pair.partition("=")
        if not sep or not cls.strip().isdigit() or not name.strip():
            raise ConfigError(
                f"bad pair {pair!r}{_where(source)}: pretrain.class_regimes takes class=regime "
                "pairs separated by commas, e.g. 0=left,1=right"
            )
        out[int(cls)] = name.strip()
    return out


def cross_key_problems(c: TrialConfig) -> list[tuple[str, str]]:
    """(key, what is wrong) for each rule across keys that `c` breaks; the only rules not
    declared on a single key."""
    problems = []
    if c.canvas.size < c.canvas.item_size:
        problems.append(
            ("canvas.size", f"must be at least canvas.item_size ({c.canvas.item_size})")
        )
    if (c.canvas.size - c.canvas.item_size) * math.sqrt(2) < c.canvas.item_size:
        # Untrained centres and positional consistency need two centres one item width apart.
        problems.append(
            (
                "canvas.size",
                f"must leave two centres one item width apart: at least "
                f"{c.canvas.item_size + math.ceil(c.canvas.item_size / math.sqrt(2))} for "
                f"canvas.item_size {c.canvas.item_size}",
            )
        )
    if c.pretrain.dataset == "imagenet" and c.canvas.channels != 3:
        problems.append(("canvas.channels", "pretrain.dataset=imagenet needs canvas.channels=3"))
    if c.pretrain.dataset not in PRETRAIN_SPECIAL and c.pretrain.dataset == c.finetune.dataset:
        problems.append(
            (
                "finetune.dataset",
                "must differ from pretrain.dataset (new items are learned at one location)",
            )
        )
    return problems


def validate(config: TrialConfig, source: str = "") -> None:
    """Raise ConfigError for the first value outside its domain.

    Order: each key's bounds and plain choices, the class_regimes syntax, the rules across keys,
    then registry names (which import the registries' modules, so come last).
    """
    flat = to_flat(config)

    def bad(key_: str, what: str) -> ConfigError:
        return ConfigError(f"bad value {flat[key_]!r} for {key_!r}{_where(source)}: {what}")

    for key_, spec in KEYS.items():
        value = flat[key_]
        if spec.bounds is not None:
            point = KEY_TYPES[key_] == Point
            if not all(spec.bounds.holds(v) for v in (value if point else (value,))):
                raise bad(key_, f"{'fractions ' if point else ''}must be {spec.bounds}")
        if isinstance(spec.choices, tuple):
            if all(isinstance(c, str) for c in spec.choices):
                check_choice(key_, value, spec.choices, source)
            elif value not in spec.choices:
                raise bad(key_, f"must be {' or '.join(map(format_value, spec.choices))}")
    pairs = class_regime_pairs(config.pretrain.class_regimes, source)
    for key_, what in cross_key_problems(config):
        raise bad(key_, what)
    for key_, spec in KEYS.items():
        if isinstance(spec.choices, Registry):
            check_choice(key_, flat[key_], choices_for(key_), source)
    regimes = registry_names("pretrain.class_regimes", REGIMES)
    for name in pairs.values():
        check_choice("pretrain.class_regimes", name, regimes, source, kind=REGIMES.kind)


def data_root(config: TrialConfig) -> Path:
    """Where real datasets are read from (see `DataConfig.root`)."""
    if config.data.root:
        return Path(config.data.root).expanduser()
    if os.environ.get("TRANSINV_DATA"):
        return Path(os.environ["TRANSINV_DATA"]).expanduser()
    # ../shared/data relative to the project checkout, then to the working directory.
    for base in (Path(__file__).resolve().parents[1], Path.cwd()):
        candidate = base.parent / "shared" / "data"
        if candidate.is_dir():
            return candidate
    return Path("data")


_SHORT_TYPES: dict[Any, str] = {
    bool: "bool",
    int: "int",
    float: "float",
    str: "str",
    Point: "point",
}


def domain_text(key_: str) -> str:
    """A key's domain as one line: `>= 32`, `in [0, 1]`, or its choices."""
    spec = KEYS[key_]
    if spec.bounds is not None:
        return f"{'each ' if KEY_TYPES[key_] == Point else ''}{spec.bounds}"
    if spec.choices is None:
        return ""
    try:
        return ", ".join(map(format_value, choices_for(key_) or ()))
    except ConfigError:
        registry = spec.choices
        assert isinstance(registry, Registry)
        return f"a registered {registry.kind} (needs {registry.owner}, not importable here)"


def describe() -> list[tuple[str, str, str, str, str]]:
    """(key, type, default, domain, doc) for every flat key, for `--keys` and docs."""
    defaults = to_flat(TrialConfig())
    return [
        (k, _SHORT_TYPES[t], format_value(defaults[k]), domain_text(k), KEYS[k].doc)
        for k, t in KEY_TYPES.items()
    ]


__all__ = [
    "Bounds",
    "CanvasConfig",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "FinetuneConfig",
    "KEYS",
    "KEY_TYPES",
    "KeySpec",
    "ModelConfig",
    "OptimConfig",
    "PretrainConfig",
    "RunConfig",
    "StopConfig",
    "TrialConfig",
    "check_choice",
    "choices_for",
    "class_regime_pairs",
    "describe",
    "from_flat",
    "key",
    "parse_overrides",
    "to_flat",
    "validate",
]
