"""The README's results say what the committed report says: every check row in the generated
block (between the results markers) carries the verdict and effect of the same check in
docs/results/report.json, and every check of the report has its row."""

from __future__ import annotations

import json
from pathlib import Path

from transinv.report_markdown import README_BEGIN, README_END

ROOT = Path(__file__).resolve().parents[1]


def _check_name(check: dict) -> str:
    return f"{check['id']}[{check['label']}]" if check["label"] else check["id"]


def _rows(block: str) -> dict[tuple[str, str], list[str]]:
    """(study, check) -> the row's cells, for the rows of the checks tables."""
    rows = {}
    for line in block.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if len(cells) == 10 and cells[0].startswith("`") and cells[1].startswith("`"):
            rows[(cells[0].strip("`"), cells[1].strip("`"))] = cells
    return rows


def test_readme_results_block_carries_report_json_verdicts_and_effects():
    readme = (ROOT / "README.md").read_text()
    block = readme.split(README_BEGIN, 1)[1].split(README_END, 1)[0]
    report = json.loads((ROOT / "docs" / "results" / "report.json").read_text())
    checks = {
        (study["name"], _check_name(c)): c
        for study in report["studies"]
        for section in study["sections"]
        for c in section["checks"]
    }
    rows = _rows(block)
    assert checks and rows.keys() == checks.keys(), rows.keys() ^ checks.keys()
    for key, check in checks.items():
        cells = rows[key]
        assert cells[8].strip("*") == check["verdict"], (key, cells[8], check["verdict"])
        effect = check["effect"]
        shown = cells[5].split(" [")[0]
        assert shown == ("n/a" if effect is None else f"{effect:+.2f}"), (key, shown, effect)
