"""What a report says, before it is written down: each study's finished trials read from MLflow
with the checks of the analyses its study file names (`StudyReport`), Holm over a study's
`paper` checks, the checks resting on the same trials (`shared_with`), verdicts counted once per
piece of evidence, and each `paper` check beside its `_paper` sibling's (`budget_pairs`).

Markdown lives in `report_markdown.py`; the files, JSON and the MLflow copy in `report.py`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from transinv import stats
from transinv.analyses import ANALYSES, Check, Section, StudyData, plan_from_param, with_holm
from transinv.analyses.base import trial_key
from transinv.analyses.expectations import (
    HYPOTHESIS,
    PAPER,
    SANITY,
    VERDICTS,
)
from transinv.config import ConfigError
from transinv.results import load_runs, study_info
from transinv.study_cost import running_seconds

HEATMAP_PREFIX = "heatmap_"

SOURCE_TITLES = {
    PAPER: "The paper's claims",
    HYPOTHESIS: "Our hypotheses (not the paper's claims)",
    SANITY: "Instrument checks (true by construction or preconditions; never claims)",
}
METHODS = (
    "Each check states its pre-registered expectation (direction and minimal effect of "
    "interest, from the study file's `report:`). Effects come with a 95 % confidence interval "
    f"and a two-sided p: {stats.WELCH} for two groups of runs; {stats.ONE_SAMPLE} or "
    f"{stats.PAIRED} for one group; {stats.BOOTSTRAP} for rank correlations; {stats.BINOMIAL} "
    "for fractions of runs; for `within` (an equivalence claim) p is from two one-sided tests "
    "against the margin. Verdicts: `held` when p < 0.05 (the CI excludes 0) on the expected "
    "side and the effect reaches the minimal effect; `not shown` when the CI includes 0 or the "
    "effect is below the minimal effect; `contradicted` when p < 0.05 on the wrong side; `no "
    "data` when a group is empty. The `paper` checks of each study are Holm-corrected: their "
    "verdicts use the adjusted p (column p_holm) in place of p; the CI shown is unadjusted. "
    "Checks resting on some of the same trials (identical config and seed, in any study) name "
    "each other in `shared_with`; checks on exactly the same trials count once in the counts."
)


@dataclass
class StudyReport:
    data: StudyData
    sections: list[Section]
    counts: dict[str, int]
    """Trial runs by status."""
    wall_s: float
    """Time with at least one finished trial running (`study_cost.running_seconds`; NaN
    without finished trials)."""
    trial_s: float
    """Sum of the trials' own durations."""

    @property
    def name(self) -> str:
        return self.data.name


def load_study(study: str, uri: str) -> tuple[StudyData, dict[str, int], float, float]:
    runs = load_runs(study, uri)
    info = study_info(study, uri)
    counts = {str(k): int(v) for k, v in runs["status"].value_counts().items()} if len(runs) else {}
    finished = runs[runs["status"] == "FINISHED"].reset_index(drop=True)
    finished.attrs.update(runs.attrs)
    if len(finished):
        wall = running_seconds(finished["start_time"], finished["end_time"])
        trial = (finished["end_time"] - finished["start_time"]).dt.total_seconds().sum()
    else:
        wall = trial = math.nan
    return StudyData(study, finished, info), counts, float(wall), float(trial)


def analyses_of(info: pd.Series, override: Sequence[str] | None = None) -> list[str]:
    """The analyses to run: `override`, else those the study file names (`report:`)."""
    registered = plan_from_param(str(info.get("report", "") or "")).analyses
    names = list(override) if override else list(registered)
    unknown = [n for n in names if n not in ANALYSES]
    if unknown:
        raise ConfigError(
            f"unknown analyses {unknown} for study {info.name!r}; choose from {', '.join(ANALYSES)}"
        )
    if not names:
        raise ConfigError(
            f"study {info.name!r} names no analyses (no `report:` in its study file); pass "
            f"--analysis with one of {', '.join(ANALYSES)}"
        )
    return names


def with_study_holm(sections: Sequence[Section]) -> list[Section]:
    """Holm over the study's `paper` checks, across its sections."""
    checks = with_holm([c for s in sections for c in s.checks])
    out = []
    for section in sections:
        mine, checks = checks[: len(section.checks)], checks[len(section.checks) :]
        out.append(dataclasses.replace(section, checks=mine))
    return out


def mark_shared(reports: Sequence[StudyReport]) -> None:
    """Fill each check's `shared_with`: the other checks of the report that rest on some of the
    same trials (a trial = config and seed, so the same trial run by two studies counts)."""
    key_of = _trial_keys(reports)
    everything = [
        (
            report,
            section,
            i,
            f"{report.name}:{check.name}",
            {key_of.get(r, r) for r in check.run_ids},
        )
        for report in reports
        for section in report.sections
        for i, check in enumerate(section.checks)
    ]
    for _, section, i, name, keys in everything:
        shared = tuple(o for _, _, _, o, other in everything if o != name and keys & other)
        section.checks[i] = dataclasses.replace(section.checks[i], shared_with=shared)


def _trial_keys(reports: Sequence[StudyReport]) -> dict[str, str]:
    """Each run's `trial_key` by run id, over every study of the report (computed once: a key
    builds and validates the run's config)."""
    return {
        run_id: trial_key(row)
        for report in reports
        for run_id, row in report.data.runs.set_index("run_id", drop=False).iterrows()
    }


def verdict_counts(reports: Sequence[StudyReport]) -> dict[str, dict[str, int]]:
    """Verdicts per source; checks with the same source and verdict on exactly the same trials
    count once (one piece of evidence, however many checks read it)."""
    key_of = _trial_keys(reports)
    seen: set[tuple] = set()
    counts: dict[str, dict[str, int]] = {s: dict.fromkeys(VERDICTS, 0) for s in SOURCE_TITLES}
    for report in reports:
        for section in report.sections:
            for check in section.checks:
                trials = frozenset(key_of.get(r, r) for r in check.run_ids)
                key = (check.source, check.verdict, trials or (report.name, check.name))
                if key in seen:
                    continue
                seen.add(key)
                counts[check.source][check.verdict] += 1
    return {s: {v: n for v, n in c.items() if n} for s, c in counts.items()}


def status_counts(report: StudyReport) -> str:
    """`18 finished, 1 failed`: the study's trial runs by status."""
    return ", ".join(f"{n} {status.lower()}" for status, n in sorted(report.counts.items()))


def figure_file(section: Section, name: str) -> str:
    return f"{section.analysis}_{name}"


PAPER_BUDGET_SUFFIX = "_paper"


@dataclass(frozen=True)
class BudgetPair:
    """A `paper` check of a study and the same check of its `_paper` sibling."""

    study: str
    small: Check
    paper: Check

    @property
    def difference(self) -> float:
        """The paper budget's effect minus the small budget's."""
        return self.paper.effect - self.small.effect

    def to_json(self) -> dict:
        keys = ("effect", "ci_low", "ci_high", "p_holm", "n", "verdict")
        return {
            "study": self.study,
            "check": self.small.name,
            "small": {k: getattr(self.small, k) for k in keys},
            "paper": {k: getattr(self.paper, k) for k in keys},
            "difference": self.difference,
        }


def budget_pairs(reports: Sequence[StudyReport]) -> list[BudgetPair]:
    """Each `paper` check of a study whose `_paper` sibling is also in `reports`, beside the
    sibling's (report.json's `budgets`)."""
    by_name = {r.name: r for r in reports}
    pairs = []
    for paper in reports:
        small = by_name.get(paper.name.removesuffix(PAPER_BUDGET_SUFFIX))
        if not paper.name.endswith(PAPER_BUDGET_SUFFIX) or small is None:
            continue
        theirs = {c.name: c for s in paper.sections for c in s.checks if c.source == PAPER}
        for check in (c for s in small.sections for c in s.checks if c.source == PAPER):
            if check.name in theirs:
                pairs.append(BudgetPair(small.name, check, theirs[check.name]))
    return pairs
