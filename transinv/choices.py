"""Registries: the named things a config key chooses from (architectures, item sources, regimes).

This is the ground floor beside `config.py`: it imports nothing of the project. The modules that
own the things (`models.py`, `sources.py`, `regimes.py`) register into these registries with a
decorator; `config.py` links a key to its registry on the key's declaration
(`arch: str = key("small_cnn", choices=MODELS)`), so one registry feeds validation, the YAML
validator, `python -m transinv --list` and test parametrization.

An entry is the registered function plus its facts (an architecture's head kind and total
stride, a source's class limits, ...): a fact about an entry is stored on it, not kept in a list
beside the registry or read off its name. Reading a registry first imports its owner module (a
fixed path per registry), so that `config` can check names without importing torch itself.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Entry:
    """One registered thing: its name, the function that builds or computes it, its facts."""

    name: str
    fn: Callable[..., Any]
    facts: Mapping[str, Any] = field(default_factory=dict)

    @property
    def doc(self) -> str:
        """The first sentence of the function's docstring, on one line (empty without one)."""
        return first_sentence(self.fn.__doc__)


def first_sentence(doc: str | None) -> str:
    """The first sentence of a docstring, its lines joined."""
    paragraph = " ".join((doc or "").strip().split("\n\n", 1)[0].split())
    end = paragraph.find(". ")
    return paragraph if end < 0 else paragraph[: end + 1]


class Registry(Mapping[str, Callable[..., Any]]):
    """Name -> function, filled by `@registry.register(**facts)` in the owner module.

    A read-only mapping (`MODELS["small_cnn"]`, `list(MODELS)`, `"vgg16" in MODELS`); any read
    imports the owner module first, so every entry is there whoever reads.
    """

    def __init__(self, kind: str, owner: str, facts: tuple[str, ...] = ()) -> None:
        self.kind = kind
        """What an entry is, in error messages (`architecture`, `dataset`, `regime`)."""
        self.owner = owner
        """The module that registers the entries (`transinv.models`)."""
        self.fact_names = facts
        """Facts every entry must declare, in the order `--list` shows them."""
        self._entries: dict[str, Entry] = {}

    def register(self, *, name: str | None = None, **facts: Any) -> Callable[[F], F]:
        """Decorator registering a function under its own `__name__` (or `name`, only for a name
        that cannot be a Python identifier) with `facts`; a name registered twice is refused."""
        missing = [f for f in self.fact_names if f not in facts]
        unknown = [f for f in facts if f not in self.fact_names]
        if missing or unknown:
            raise TypeError(
                f"{self.kind} facts must be exactly {', '.join(self.fact_names) or 'none'}; "
                f"missing {missing}, unknown {unknown}"
            )

        def add(fn: F) -> F:
            entry = Entry(name or fn.__name__, fn, dict(facts))
            if entry.name in self._entries:
                raise ValueError(f"{self.kind} {entry.name!r} is registered twice")
            self._entries[entry.name] = entry
            return fn

        return add

    def load(self) -> None:
        """Import the owner module, which registers every entry (raises its ImportError)."""
        importlib.import_module(self.owner)

    def entries(self) -> list[Entry]:
        self.load()
        return list(self._entries.values())

    def entry(self, name: str) -> Entry:
        self.load()
        return self._entries[name]

    def facts(self, name: str) -> Mapping[str, Any]:
        return self.entry(name).facts

    def names(self, **facts: Any) -> list[str]:
        """Names in registration order; with `facts`, only the entries having those values
        (`MODELS.names(head="gap")`)."""
        return [
            e.name
            for e in self.entries()
            if all(e.facts.get(k, _ABSENT) == v for k, v in facts.items())
        ]

    def __getitem__(self, name: str) -> Callable[..., Any]:
        return self.entry(name).fn

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.entries())

    def __contains__(self, name: object) -> bool:
        self.load()
        return name in self._entries

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self._entries)} entries registered)"


_ABSENT = object()

MODELS = Registry("architecture", "transinv.models", facts=("head", "stride", "torchvision"))
"""Architecture -> builder `(num_classes, in_channels, canvas_size) -> Net`. Facts: `head`
(`flatten`: the last map is flattened, position kept; `gap`: global average pool), `stride`
(total stride of the trunk), `torchvision` (built by torchvision: has ImageNet weights)."""

SOURCES = Registry("dataset", "transinv.sources", facts=("default_classes", "max_classes"))
"""Item source -> loader `(SourceRequest) -> RawItems`. Facts: `default_classes` (used when a
config asks for 0), `max_classes` (None: unbounded, procedural)."""

REGIMES = Registry("regime", "transinv.regimes", facts=("uses",))
"""Regime -> centre sampler `(Placement, labels, items, generator) -> centres`. Fact: `uses`,
the config keys besides the canvas and the item set that change where it puts centres."""

ANALYSES = Registry("analysis", "transinv.analyses")
"""Analysis -> `(StudyData) -> Section` (`transinv/analyses/`); a study file's `report:` names
them."""

REGISTRIES = (MODELS, SOURCES, REGIMES)
"""Every registry of a config key, for `python -m transinv --list` (which lists analyses too)."""

__all__ = [
    "ANALYSES",
    "MODELS",
    "REGIMES",
    "REGISTRIES",
    "SOURCES",
    "Entry",
    "Registry",
    "first_sentence",
]
