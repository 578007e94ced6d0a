"""What each study is for: one analysis per claim of the paper (and per question beyond it),
turning a study's runs into tables, figures and checks of the paper's expectations.

    base.py              Check, Section, StudyData, the registry and the verdict rules
    accuracy.py          claims read off accuracy over the canvas (1, 2, 3, 6, architectures)
    representations.py   claims read off per-layer G and its curves (4, 5)
    beyond.py            questions the paper never asked (dose-response, duration, regime search)

An analysis is a function `(StudyData) -> Section`, registered by name in `ANALYSES`; a study
file names the analyses that apply to it (`report: [forgetting]`), and `report.py` writes their
sections as Markdown. Everything comes from MLflow through `results.py` (runs, curves, final
grids): an analysis never touches a server or a file itself.

A check states the paper's expectation, what was measured (mean ± std over seeds, n trials) and
a verdict: `held` when the effect is in the expected direction by more than both a margin and
two standard errors, `partly` when the direction is right but the effect is small or noisy,
`not held` otherwise, `no data` when the study lacks the trials. Questions the paper never
asked get `measured`: a number, not a verdict. Verdicts are what a careful reader would say of
three seeds; they are reported, never asserted by the tests.
"""

from __future__ import annotations

from transinv.analyses import accuracy, beyond, representations  # noqa: F401 (they register)
from transinv.analyses.base import (
    ANALYSES,
    HELD,
    MEASURED,
    NO_DATA,
    NOT_HELD,
    PARTLY,
    Check,
    Section,
    StudyData,
    compare,
    level,
    representation_layer,
    trend,
)

__all__ = [
    "ANALYSES",
    "HELD",
    "MEASURED",
    "NO_DATA",
    "NOT_HELD",
    "PARTLY",
    "Check",
    "Section",
    "StudyData",
    "compare",
    "level",
    "representation_layer",
    "trend",
]
