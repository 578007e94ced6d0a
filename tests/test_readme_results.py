"""The README's results say what the committed reports say: in every generated block (between
`<!-- results:begin -->` and `<!-- results:end -->`, or a named block's markers), every check row
carries the verdict and effect of the same check in the report.json of the folder the block was
written from (its `--out`), and every check of that report has its row."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from transinv.report_markdown import README_BLOCK, readme_markers

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = sorted(set(re.findall(r"<!-- ([\w:-]+):begin -->", README)))


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


def test_the_readme_holds_the_paper_claims_block():
    assert README_BLOCK in BLOCKS


@pytest.mark.parametrize("name", BLOCKS)
def test_readme_results_block_carries_its_report_json_verdicts_and_effects(name):
    begin, end = readme_markers(name)
    block = README.split(begin, 1)[1].split(end, 1)[0]
    written_from = re.search(r"--out (\S+) ", block)
    assert written_from, f"block {name} does not say which report it was written from"
    report = json.loads((ROOT / written_from.group(1) / "report.json").read_text())
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
