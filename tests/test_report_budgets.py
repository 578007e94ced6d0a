"""The report's side-by-side of the two budgets: a study and its `_paper` sibling, one row per
`paper` check they share, on hand-made checks (no MLflow needed for the arithmetic)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from transinv.analyses import HELD, NOT_SHOWN, PAPER, Check, Section, StudyData
from transinv.analyses.expectations import HYPOTHESIS
from transinv.report_markdown import render_readme
from transinv.report_model import StudyReport, budget_pairs


def check(name: str, source: str, effect: float, verdict: str, label: str = "") -> Check:
    return Check(
        id=name,
        label=label,
        source=source,
        expectation="x above y",
        claim="quoted" if source == PAPER else "",
        direction="greater",
        min_effect=0.05,
        measured="m",
        verdict=verdict,
        effect=effect,
        ci_low=effect - 0.1,
        ci_high=effect + 0.1,
        p=0.01,
        p_holm=0.02,
        n=(5, 5),
    )


def study(name: str, checks: list[Check]) -> StudyReport:
    data = StudyData(name, pd.DataFrame({"run_id": [], "seed": []}), pd.Series({"run_id": "p"}))
    section = Section("transfer", "Transfer", "does it?", checks=checks)
    return StudyReport(data, [section], {"FINISHED": 10}, 60.0, 100.0)


def test_each_shared_paper_check_gets_both_budgets_and_their_difference():
    small = study(
        "claim2",
        [
            check("transfer.learned", PAPER, 0.30, HELD, label="glyphs -> mnist"),
            check("transfer.learned", PAPER, 0.20, HELD, label="glyphs -> omniglot"),
            check("head.gap", HYPOTHESIS, 0.40, HELD),
        ],
    )
    paper = study(
        "claim2_paper",
        [
            check("transfer.learned", PAPER, 0.10, NOT_SHOWN, label="glyphs -> mnist"),
            check("head.gap", HYPOTHESIS, 0.10, NOT_SHOWN),
        ],
    )
    lonely = study("claim3_paper", [check("coverage.whole", PAPER, 0.2, HELD)])
    rows = [pair.to_json() for pair in budget_pairs([small, paper, lonely])]
    # only the paper check both budgets have; hypotheses and unpaired studies stay out
    assert [(r["study"], r["check"]) for r in rows] == [
        ("claim2", "transfer.learned[glyphs -> mnist]")
    ]
    assert math.isclose(rows[0]["difference"], -0.20)
    assert rows[0]["small"]["verdict"] == HELD and rows[0]["paper"]["verdict"] == NOT_SHOWN
    text = render_readme([small, paper, lonely], Path("docs/results"), "now")
    row = next(
        line for line in text.splitlines() if "glyphs -> mnist]` |" in line and "-0.20" in line
    )
    assert (
        "+0.30 [+0.20, +0.40] | 5/5 | held" in row
        and "+0.10 [+0.00, +0.20] | 5/5 | not shown" in row
    )
    assert not budget_pairs([small, lonely])  # no sibling, no table
    assert "both budgets" not in render_readme([small], Path("docs/results"), "now")
