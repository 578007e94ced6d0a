"""One typed trial configuration, its defaults, and its flat dotted-key form.

`TrialConfig` is a tree of frozen dataclasses; every default lives here and nowhere else. Its flat
form (`to_flat` / `from_flat`) uses dotted keys (`model.arch`, `pretrain.translation`) that are
spelled the same in YAML search spaces, Ray trial configs, MLflow params and pandas columns.

Names that come from registries (architectures, datasets, regimes) are checked against those
registries by `validate`, which the data and model modules call through `check_choice`; this module
holds no registry itself so that it stays importable without torch.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, get_type_hints


class ConfigError(ValueError):
    """A bad configuration value: the message names the key, where it came from, and the choices."""


Point = tuple[float, float]
"""A canvas position (x, y) as fractions of the canvas side."""


@dataclass(frozen=True)
class CanvasConfig:
    size: int = 64
    """Canvas side in pixels."""
    item_size: int = 16
    """Item side in pixels (the paper's 50/224 ratio at 64 px)."""
    channels: int = 1
    """1 (grey) or 3 (grey replicated to RGB, needed for ImageNet weights)."""
    normalize: bool = True
    """Normalise each dataset's canvases by their own pixel mean and std."""


@dataclass(frozen=True)
class DataConfig:
    seed: int = 0
    """Seed of the stimuli (glyph classes, exemplar pins, held-out split). Kept apart from `seed`
    so that replicates vary training, not stimuli."""
    root: str = ""
    """Folder holding MNIST/, FashionMNIST/ and omniglot/. Empty: $TRANSINV_DATA, else
    ../shared/data beside the project when it exists."""
    download: bool = False
    """Let torchvision download MNIST/FashionMNIST into `root` when absent (needs internet)."""


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "small_cnn"


@dataclass(frozen=True)
class PretrainConfig:
    dataset: str = "glyphs"
    """An item source, `none` (vanilla: no pretraining) or `imagenet` (torchvision weights)."""
    regime: str = "whole"
    translation: float = 1.0
    """Translation range r in [0, 1] for regime `translation`: centres uniform in a box of side
    r * |V| around `location` (r=0 one location, r=1 `whole`)."""
    location: Point = (0.5, 0.5)
    """The point of regime `location` and the box centre of regime `translation`."""
    class_regimes: str = ""
    """Per-class regimes, `class=regime` pairs separated by commas (`0=left,1=right`); classes not
    listed follow `regime`."""
    classes: int = 0
    """Number of classes drawn from the source (a seeded subset for real datasets); 0 = the
    source's default."""
    steps: int = 3000
    stop: str = "fixed"
    """`fixed`: run `steps` steps. `goal`: the authors' rule, capped at `steps`."""


@dataclass(frozen=True)
class FinetuneConfig:
    dataset: str = "glyphs_b"
    location: Point = (0.25, 0.5)
    classes: int = 0
    """As `pretrain.classes`, for the finetuning set."""
    steps: int = 1000
    lr: float = 0.0
    """Finetuning learning rate; 0 = `optim.lr` (so a study can vary it without changing the
    pretraining)."""
    freeze: str = "none"
    """`none`, `conv` (conv layers frozen), `fc` (hidden FC layers frozen), `all_but_head`."""
    transfer: str = "all"
    """What pretraining hands on: `all`, `scramble_fc` (classifier re-initialised) or
    `scramble_conv` (conv layers re-initialised)."""
    stop: str = "fixed"


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-3
    batch_size: int = 64


@dataclass(frozen=True)
class StopConfig:
    """The authors' stopping rule, used by phases whose `stop` is `goal`."""

    goal: float = 0.75
    """Running train accuracy to hold."""
    window: int = 100
    """Steps in the running accuracy and loss windows."""
    patience: int = 800
    """Steps the goal must hold, or the running loss may stagnate, before stopping."""


@dataclass(frozen=True)
class EvalConfig:
    every: int = 100
    """Evaluate every this many steps (schedule `linear`)."""
    schedule: str = "linear"
    """`linear` (0, every, 2*every, ...) or `log` (log-spaced, so forgetting curves have early
    points), plus the last step either way."""
    points: int = 12
    """Number of log-spaced evaluations per phase (schedule `log`)."""
    grid_step: float = 0.0625
    """Spacing of the test grid of centres, as a canvas fraction (4 px at 64 px)."""
    grid_offset: float = 0.0
    """Shift of the test grid from the low edge of the valid range, as a canvas fraction."""
    items: int = 64
    """Held-out items of the finetuning set placed at every grid centre."""
    pretrain_items: int = 256
    """Held-out items of the pretraining set for its accuracy (and forgetting of it)."""


@dataclass(frozen=True)
class RunConfig:
    device: str = "auto"
    """`auto` (CUDA when available), `cpu` or `cuda`."""
    threads: int = 0
    """Torch intra-op threads; 0 = the CPUs this process may use."""
    pretrain_cache: str = ""
    """Folder of pretrained networks shared between trials (`transinv/pretrain_cache.py`): a
    trial whose pretraining matches a stored one finetunes from it. Empty = off."""


@dataclass(frozen=True)
class TrialConfig:
    seed: int = 0
    """Training seed: weights, sampling order, dropout."""
    canvas: CanvasConfig = field(default_factory=CanvasConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    stop: StopConfig = field(default_factory=StopConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)


# Choices that are not registries of other modules.
PRETRAIN_SPECIAL = ("none", "imagenet")
FREEZE_MODES = ("none", "conv", "fc", "all_but_head")
TRANSFER_MODES = ("all", "scramble_fc", "scramble_conv")
STOP_RULES = ("fixed", "goal")
EVAL_SCHEDULES = ("linear", "log")
DEVICES = ("auto", "cpu", "cuda")


def _leaf_types(cls: type = TrialConfig, prefix: str = "") -> dict[str, Any]:
    hints = get_type_hints(cls, globals())
    out: dict[str, Any] = {}
    for f in fields(cls):
        t = hints[f.name]
        if isinstance(t, type) and is_dataclass(t):
            out.update(_leaf_types(t, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = t
    return out


KEY_TYPES: dict[str, Any] = _leaf_types()
"""Every flat key with its type, in declaration order."""


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
    for key, raw in flat.items():
        value = parse_value(key, raw, source)
        if "." in key:
            group, name = key.split(".", 1)
            groups.setdefault(group, {})[name] = value
        else:
            top[key] = value
    for group, values in groups.items():
        top[group] = replace(getattr(config, group), **values)
    config = replace(config, **top)
    validate(config, source)
    return config


def parse_overrides(args: Iterable[str], source: str = "command line") -> dict[str, str]:
    """`["model.arch=small_cnn", ...]` as a dict; each item must be `key=value`."""
    out: dict[str, str] = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {arg!r} on the {source} is not key=value")
        out[key.strip()] = value.strip()
    return out


# Registry checks are installed by the modules that own the registries, so that validation of a
# whole config happens in one place without this module importing torch.
_CHOICE_CHECKS: dict[str, Callable[[], Iterable[str]]] = {}


def register_choices(key: str, choices: Callable[[], Iterable[str]]) -> None:
    """Declare that `key` must take one of `choices()` (called lazily, at validation)."""
    _CHOICE_CHECKS[key] = choices


def check_choice(key: str, value: str, choices: Iterable[str], source: str = "") -> None:
    choices = list(choices)
    if value not in choices:
        kind = {"model.arch": "architecture"}.get(key, "value")
        raise ConfigError(
            f"unknown {kind} {value!r}{_where(source)}: {key}; choose one of {', '.join(choices)}"
        )


def validate(config: TrialConfig, source: str = "") -> None:
    """Raise ConfigError for the first value outside its domain."""
    # Registry names: registering modules are imported here so validation is complete.
    from transinv import models, regimes, sources  # noqa: F401

    flat = to_flat(config)
    for key, choices in _CHOICE_CHECKS.items():
        check_choice(key, flat[key], choices(), source)
    check_choice("finetune.freeze", config.finetune.freeze, FREEZE_MODES, source)
    check_choice("finetune.transfer", config.finetune.transfer, TRANSFER_MODES, source)
    check_choice("pretrain.stop", config.pretrain.stop, STOP_RULES, source)
    check_choice("finetune.stop", config.finetune.stop, STOP_RULES, source)
    check_choice("eval.schedule", config.eval.schedule, EVAL_SCHEDULES, source)
    check_choice("run.device", config.run.device, DEVICES, source)

    def need(ok: bool, key: str, what: str) -> None:
        if not ok:
            raise ConfigError(f"bad value {flat[key]!r} for {key!r}{_where(source)}: {what}")

    need(config.canvas.channels in (1, 3), "canvas.channels", "must be 1 or 3")
    need(config.canvas.item_size >= 2, "canvas.item_size", "must be at least 2 pixels")
    need(
        config.canvas.size >= config.canvas.item_size,
        "canvas.size",
        f"must be at least canvas.item_size ({config.canvas.item_size})",
    )
    need(config.canvas.size >= 32, "canvas.size", "must be at least 32 pixels")
    need(0.0 <= config.pretrain.translation <= 1.0, "pretrain.translation", "must be in [0, 1]")
    for key in ("pretrain.location", "finetune.location"):
        need(all(0.0 <= v <= 1.0 for v in flat[key]), key, "fractions must be in [0, 1]")
    need(config.pretrain.steps >= 0, "pretrain.steps", "must be >= 0")
    need(config.finetune.steps >= 0, "finetune.steps", "must be >= 0")
    need(config.optim.lr > 0, "optim.lr", "must be > 0")
    need(config.finetune.lr >= 0, "finetune.lr", "must be >= 0 (0 = optim.lr)")
    need(config.optim.batch_size >= 1, "optim.batch_size", "must be >= 1")
    need(0.0 < config.stop.goal <= 1.0, "stop.goal", "must be in (0, 1]")
    need(config.stop.window >= 1, "stop.window", "must be >= 1")
    need(config.stop.patience >= 1, "stop.patience", "must be >= 1")
    need(config.eval.every >= 1, "eval.every", "must be >= 1")
    need(config.eval.points >= 2, "eval.points", "must be >= 2")
    need(0.0 < config.eval.grid_step <= 1.0, "eval.grid_step", "must be in (0, 1]")
    need(0.0 <= config.eval.grid_offset < 1.0, "eval.grid_offset", "must be in [0, 1)")
    need(config.eval.items >= 2, "eval.items", "must be >= 2")
    need(config.eval.pretrain_items >= 1, "eval.pretrain_items", "must be >= 1")
    need(config.run.threads >= 0, "run.threads", "must be >= 0")
    need(config.pretrain.classes >= 0, "pretrain.classes", "must be >= 0 (0 = source default)")
    need(config.finetune.classes >= 0, "finetune.classes", "must be >= 0 (0 = source default)")
    if config.pretrain.dataset == "imagenet":
        need(
            config.canvas.channels == 3,
            "canvas.channels",
            "pretrain.dataset=imagenet needs canvas.channels=3",
        )
    if config.pretrain.dataset not in PRETRAIN_SPECIAL:
        need(
            config.pretrain.dataset != config.finetune.dataset,
            "finetune.dataset",
            "must differ from pretrain.dataset (new items are learned at one location)",
        )
    regimes.parse_class_regimes(config.pretrain.class_regimes, source)


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


def describe() -> list[tuple[str, str, str]]:
    """(key, type, default) for every flat key, for `--help` and docs."""
    defaults = to_flat(TrialConfig())
    return [(k, _type_name(t), format_value(defaults[k])) for k, t in KEY_TYPES.items()]


__all__ = [
    "CanvasConfig",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "FinetuneConfig",
    "KEY_TYPES",
    "ModelConfig",
    "OptimConfig",
    "PretrainConfig",
    "RunConfig",
    "StopConfig",
    "TrialConfig",
    "from_flat",
    "parse_overrides",
    "to_flat",
    "validate",
]
