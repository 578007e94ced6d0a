"""What each check expects, before any trial runs: the registered checks (source, the paper's
words, expected direction, minimal effect of interest), a study file's pre-registration
(`report:`), and the one rule that turns an estimate into a verdict.

    report: [forgetting]                                      # the defaults below, resolved
    report:
      analyses: [forgetting]
      expect:
        forgetting.g_falls: {direction: less, min_effect: 0.1}  # overrides one check

`plan_from_yaml` validates that block (errors name the file and the entry) and returns a
`ReportPlan` holding the expectation of *every* check of the named analyses; the study loader
puts the resolved plan into the study's digest and the parent run logs it (`to_param`), so the
report prints what was registered at launch, not today's defaults. The checks themselves are
computed in the analysis modules; the statistics are `transinv/stats.py`.

Sources: `paper` (a claim of the paper's abstracts, quoted from ../shared/paper.md, Section 1),
`hypothesis` (ours, from a pilot or beyond the paper), `sanity` (an instrument check: true by
construction or a precondition such as "the network learned its task"; never a claim).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from transinv import stats
from transinv.choices import ANALYSES
from transinv.config import ConfigError

PAPER, HYPOTHESIS, SANITY = "paper", "hypothesis", "sanity"
SOURCES = (PAPER, HYPOTHESIS, SANITY)
GREATER, LESS, WITHIN, NONE = "greater", "less", "within", "none"
DIRECTIONS = (GREATER, LESS, WITHIN)
HELD, NOT_SHOWN, CONTRADICTED, NO_DATA, MEASURED = (
    "held",
    "not shown",
    "contradicted",
    "no data",
    "measured",
)
VERDICTS = (HELD, NOT_SHOWN, CONTRADICTED, NO_DATA, MEASURED)

# The paper's claims as ../shared/paper.md (Section 1) states them.
CLAIM_NOT_INVARIANT = (
    "A CNN trained from scratch on objects at one location systematically fails to recognise "
    "them at untrained locations [ABS-A/B/C]."
)
CLAIM_LEARNED_SIMPLE = (
    "Pretraining on much simpler datasets whose items are fully translated over the canvas "
    'works too: "also possible" in A/B, softened to "sometimes possible" in C.'
)
CLAIM_EVERY_ARCH = "every architecture tested could learn invariance [ABS-C]."
CLAIM_COVERAGE = (
    "Training on stimuli spread over the whole canvas, without the same items being "
    "translated, did not give invariance [ABS-B only]."
)
CLAIM_REPRESENTATIONS = (
    "Pretraining made the internal representations of translated copies similar (almost "
    "always, [ABS-A/B])"
)
CLAIM_FORGETTING = (
    "further training could disrupt this by catastrophic forgetting/interference [ABS-A/B/C]."
)


@dataclass(frozen=True)
class Expectation:
    direction: str
    """`greater`/`less`: the effect's expected sign; `within`: |effect| < min_effect (an
    equivalence claim); `none`: a measurement without a direction."""
    min_effect: float
    """Smallest effect of interest (for `within`: the equivalence margin)."""

    def text(self) -> str:
        if self.direction == WITHIN:
            return f"|effect| < {self.min_effect:g}"
        if self.direction == NONE:
            return "measured"
        return f"{'>' if self.direction == GREATER else '<'} 0, |effect| >= {self.min_effect:g}"


@dataclass(frozen=True)
class CheckSpec:
    """A registered check: its id (`<analysis>.<name>`), what it tests and its defaults."""

    id: str
    analysis: str
    source: str
    expectation: str
    """What is expected, in words (the instance label is added per check)."""
    effect: str
    """What the effect is: `transfer ratio, pretrained - vanilla`."""
    default: Expectation
    claim: str = ""
    """For `paper` checks: the paper's claim, quoted."""


CHECKS: dict[str, CheckSpec] = {}


def declare(
    check_id: str,
    source: str,
    expectation: str,
    effect: str,
    direction: str,
    min_effect: float,
    claim: str = "",
) -> str:
    """Register a check (at import of its analysis module); returns its id."""
    analysis = check_id.split(".", 1)[0]
    if source not in SOURCES or direction not in (*DIRECTIONS, NONE) or check_id in CHECKS:
        raise ValueError(f"bad check declaration {check_id!r}")
    if source == PAPER and not claim:
        raise ValueError(f"paper check {check_id!r} needs the paper's claim, quoted")
    CHECKS[check_id] = CheckSpec(
        check_id, analysis, source, expectation, effect, Expectation(direction, min_effect), claim
    )
    return check_id


def checks_of(analysis: str) -> list[str]:
    return [c for c, spec in CHECKS.items() if spec.analysis == analysis]


# ---------------------------------------------------------------------------------------------
# Pre-registration: the study file's `report:`.


@dataclass(frozen=True)
class ReportPlan:
    analyses: tuple[str, ...]
    expect: dict[str, Expectation]
    """Every check of the named analyses, resolved (file overrides over the defaults)."""

    def expectation(self, check_id: str) -> Expectation:
        return self.expect.get(check_id) or CHECKS[check_id].default

    def to_dict(self) -> dict[str, Any]:
        return {
            "analyses": list(self.analyses),
            "expect": {
                k: {"direction": e.direction, "min_effect": e.min_effect}
                for k, e in sorted(self.expect.items())
            },
        }

    def to_param(self) -> str:
        """Compact JSON for the parent run's `report` param (read back by `plan_from_param`)."""
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True)


def _where_error(source: str, where: str, what: str, hint: str = "") -> ConfigError:
    return ConfigError(f"{what} in {source}: {where}" + (f"; {hint}" if hint else ""))


def plan_from_yaml(value: Any, source: str) -> ReportPlan:
    """The study file's `report:` (a list of analyses, or `{analyses: [...], expect: {check:
    {direction, min_effect}}}`), validated and resolved; `source` names the file in errors."""
    if value is None:
        return ReportPlan((), {})
    if isinstance(value, list):
        value = {"analyses": value}
    if not isinstance(value, dict):
        raise _where_error(
            source,
            "report",
            f"bad report {value!r}",
            "a list of analyses or {analyses: [...], expect: {check: {direction, min_effect}}}",
        )
    for key in value:
        if key not in ("analyses", "expect"):
            raise _where_error(
                source, f"report.{key}", f"unknown key {key!r}", "valid keys: analyses, expect"
            )
    names = value.get("analyses") or []
    if not isinstance(names, list):
        raise _where_error(source, "report.analyses", f"bad analyses {names!r}", "a list")
    for i, name in enumerate(names):
        if name not in ANALYSES:
            raise _where_error(
                source,
                f"report.analyses[{i}]",
                f"unknown value {name!r}",
                f"choose one of {', '.join(ANALYSES)}",
            )
    known = [c for name in names for c in checks_of(name)]
    expect = {c: CHECKS[c].default for c in known}
    given = value.get("expect") or {}
    if not isinstance(given, dict):
        raise _where_error(
            source,
            "report.expect",
            f"bad expect {given!r}",
            "{check id: {direction: greater|less|within, min_effect: number}}",
        )
    for check_id, entry in given.items():
        where = f"report.expect.{check_id}"
        if check_id not in known:
            raise _where_error(
                source,
                where,
                f"unknown check {check_id!r}",
                f"checks of {', '.join(names) or 'no analysis'}: {', '.join(known) or 'none'}",
            )
        if not isinstance(entry, dict) or set(entry) - {"direction", "min_effect"}:
            raise _where_error(
                source, where, f"bad expectation {entry!r}", "keys: direction, min_effect"
            )
        default = CHECKS[check_id].default
        direction = entry.get("direction", default.direction)
        allowed = (NONE,) if default.direction == NONE else DIRECTIONS
        if direction not in allowed:
            raise _where_error(
                source,
                f"{where}.direction",
                f"unknown value {direction!r}",
                f"choose one of {', '.join(allowed)}",
            )
        size = entry.get("min_effect", default.min_effect)
        ok = isinstance(size, int | float) and not isinstance(size, bool) and math.isfinite(size)
        if not ok or size < 0:
            raise _where_error(
                source, f"{where}.min_effect", f"bad value {size!r}", "expected a number >= 0"
            )
        expect[check_id] = Expectation(direction, float(size))
    return ReportPlan(tuple(names), expect)


def plan_from_param(text: str) -> ReportPlan:
    """The parent run's `report` param: the JSON of `to_param`, or (studies launched before
    pre-registration) a comma-separated list of analyses, resolved with today's defaults."""
    text = (text or "").strip()
    if text.startswith("{"):
        data = json.loads(text)
        expect = {
            k: Expectation(v["direction"], float(v["min_effect"]))
            for k, v in data.get("expect", {}).items()
        }
        return ReportPlan(tuple(data.get("analyses", [])), expect)
    names = tuple(n for n in text.split(",") if n)
    return ReportPlan(names, {})


# ---------------------------------------------------------------------------------------------
# The verdict rule.


def verdict(expectation: Expectation, estimate: stats.Estimate, p: float) -> str:
    """The one rule. `p` is the p-value of the check's own test (Holm-adjusted for `paper`
    checks; unadjusted, p < 0.05 is the 95 % CI excluding 0).

    greater / less: `held` when p < 0.05, the effect lies on the expected side and reaches
    min_effect; `contradicted` when p < 0.05 on the wrong side; else `not shown`.
    within (an equivalence claim; p from two one-sided tests against +-min_effect): `held` when
    p < 0.05; `contradicted` when the 95 % CI excludes 0 and |effect| >= min_effect; else
    `not shown`. `no data` when a group is empty.
    """
    if expectation.direction == NONE:
        return MEASURED if not estimate.empty else NO_DATA
    if estimate.empty:
        return NO_DATA
    effect, size = estimate.effect, expectation.min_effect
    if expectation.direction == WITHIN:
        if p < stats.ALPHA:
            return HELD
        excludes = estimate.ci_low > 0 or estimate.ci_high < 0
        return CONTRADICTED if excludes and abs(effect) >= size else NOT_SHOWN
    if not p < stats.ALPHA:  # also NaN: one replicate, no interval
        return NOT_SHOWN
    signed = effect if expectation.direction == GREATER else -effect
    if signed < 0:
        return CONTRADICTED
    return HELD if signed >= size else NOT_SHOWN


def test_p(expectation: Expectation, estimate: stats.Estimate) -> float:
    """The p-value of the check's own test: the two-sided p of the estimate, or for `within`
    the TOST p against the margin."""
    if expectation.direction == WITHIN:
        return stats.equivalence_p(estimate, expectation.min_effect)
    return estimate.p
