"""Constraints on a trial's metrics, `METRIC OP VALUE`: one grammar for study files
(`constraints:`), `python -m study best --where` and the regime-search analysis.

    Constraint.parse("finetune/acc_trained >= 0.9")      # spaces around OP are optional
    c.holds({"finetune/acc_trained": 0.95})              # a metrics mapping
    c.test(runs["finetune/acc_trained"])                 # a value or a pandas column
    to_json(spec.constraints) / from_json(text)          # how a study's parent run keeps them

Reading a study file is `study/space.py`; ranking conditions under constraints is `results.py`.
"""

from __future__ import annotations

import json
import math
import operator
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

from transinv.config import ConfigError

OPS: dict[str, Callable[[Any, float], Any]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
}
METRIC_PATTERN = r"[a-z_]+/[a-zA-Z0-9_./]+"
"""A metric key, `group/quantity[/layer]` (see `metrics.py`)."""
FORM = f"expected 'METRIC OP VALUE' like 'finetune/acc_trained >= 0.9', OP one of {', '.join(OPS)}"
_RE = re.compile(rf"^\s*({METRIC_PATTERN})\s*(>=|<=|>|<)\s*(\S+)\s*$")


class Constraint(NamedTuple):
    """`metric op value`, e.g. `finetune/acc_trained >= 0.9` (unpacks as a 3-tuple)."""

    metric: str
    op: str
    value: float

    @classmethod
    def parse(cls, text: Any, where: str = "") -> Constraint:
        """ConfigError naming `text`, `where` it came from and the form when it is not one."""
        match = _RE.match(text) if isinstance(text, str) else None
        try:
            value = float(match.group(3)) if match else math.nan
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise ConfigError(f"bad constraint {text!r}{f' in {where}' if where else ''}; {FORM}")
        return cls(match.group(1), match.group(2), value)

    def test(self, value: Any) -> Any:
        """`value op bound` for a number or, elementwise, a pandas column (NaN fails)."""
        return OPS[self.op](value, self.value)

    def holds(self, metrics: Mapping[str, Any]) -> bool:
        """True iff the metric is reported, not NaN, and satisfies the bound."""
        m = _metric(metrics, self.metric)
        return m is not None and bool(self.test(m))

    def violation(self, metrics: Mapping[str, Any]) -> float:
        """How far the metric is from the bound: 0 when it holds, inf when missing or NaN.

        Optuna counts values <= 0 as feasible, so a strict bound met with equality is a tiny
        positive violation rather than 0.
        """
        m = _metric(metrics, self.metric)
        if m is None:
            return math.inf
        if self.test(m):
            return 0.0
        return max(abs(m - self.value), 1e-12)

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.value:.12g}"


def _metric(metrics: Mapping[str, Any], key: str) -> float | None:
    value = metrics.get(key)
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def to_json(constraints: Iterable[Constraint]) -> str:
    """`[["finetune/acc_trained", ">=", 0.9], ...]`: structured, so nothing re-parses text."""
    return json.dumps([list(c) for c in constraints])


def from_json(text: str | None) -> tuple[Constraint, ...]:
    """The constraints `to_json` wrote (none for an empty or missing value)."""
    return tuple(Constraint(m, op, float(v)) for m, op, v in json.loads(text or "[]"))
