"""What each study is for: one analysis per claim of the paper (and per question beyond it),
turning a study's runs into tables, figures and checks of pre-registered expectations.

    expectations.py      the registered checks (source, the paper's words, direction, minimal
                         effect), a study file's `report:` pre-registration, the verdict rule
    base.py              Check, Section, StudyData, the registry, estimates -> checks, Holm
    accuracy.py          claims read off accuracy over the canvas (1, 2, 3, 6, architectures)
    representations.py   claims read off per-layer G and its curves (4, 5)
    beyond.py            questions the paper never asked (dose-response, duration)
    search.py            what the Optuna searches found (regime search, Pareto trade-offs)
    builtin.py           built-in (anti-aliased) vs learned invariance (issue 16)

An analysis is a function `(StudyData) -> Section`, registered by name in `ANALYSES`; a study
file names the analyses that apply to it and may override their checks' expectations
(`report: {analyses: [forgetting], expect: {...}}`), and `report.py` writes their sections as
Markdown. Everything comes from MLflow through `results.py` (runs, curves, final grids): an
analysis never touches a server or a file itself.

Every check has a source: `paper` (a claim of the paper's abstracts, quoted), `hypothesis`
(ours), or `sanity` (an instrument check, true by construction or a precondition: never a
claim). Its effect comes with a 95 % CI, a p-value, n per group and the run ids behind it
(`transinv/stats.py`); the verdict is `held`, `not shown`, `contradicted` or `no data`
(`expectations.verdict`), on Holm-adjusted p for a study's `paper` checks. Verdicts are
reported, never asserted by the tests of real studies; the known-answer tests plant them.
"""

from __future__ import annotations

from transinv.analyses import (  # noqa: F401 (they register)
    accuracy,
    beyond,
    builtin,
    representations,
    search,
)
from transinv.analyses.base import (
    ANALYSES,
    Check,
    Section,
    StudyData,
    representation_layer,
    with_holm,
)
from transinv.analyses.expectations import (
    CHECKS,
    CONTRADICTED,
    HELD,
    MEASURED,
    NO_DATA,
    NOT_SHOWN,
    PAPER,
    SANITY,
    ReportPlan,
    plan_from_param,
    plan_from_yaml,
)

__all__ = [
    "ANALYSES",
    "CHECKS",
    "CONTRADICTED",
    "HELD",
    "MEASURED",
    "NO_DATA",
    "NOT_SHOWN",
    "PAPER",
    "SANITY",
    "Check",
    "ReportPlan",
    "Section",
    "StudyData",
    "plan_from_param",
    "plan_from_yaml",
    "representation_layer",
    "with_holm",
]
