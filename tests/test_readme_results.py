"""The README's results say what the committed reports say: in every generated block (between
`<!-- results:begin -->` and `<!-- results:end -->`, or a named block's markers), every check row
carries the verdict and effect of the same check in the report.json of the folder the block was
written from (its `--out`), and every check of that report has its row; and the hand-written
**Reading** after a block prints no number its sources do not print."""

from __future__ import annotations

import json
import math
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


DECIMAL = re.compile(r"\d+\.\d+")
LINKED_REPORT = re.compile(r"\]\((docs/results/[\w/-]+/report\.md)\)")


def _reading(name: str) -> str | None:
    """The hand-written **Reading** paragraph that follows block `name`, if any."""
    after = README.split(readme_markers(name)[1], 1)[1]
    return next((p for p in after.split("\n\n")[:3] if p.startswith("**Reading")), None)


def _prints(number: str, sources: list[float]) -> bool:
    """Whether some source number, rounded to `number`'s decimals, is `number`."""
    places = len(number.split(".")[1])
    return any(math.isclose(round(s, places), float(number)) for s in sources)


@pytest.mark.parametrize("name", [n for n in BLOCKS if _reading(n)])
def test_reading_prints_only_numbers_its_sources_print(name):
    """Every decimal in a block's **Reading** is printed (to the reading's precision) by its
    block, its folder's report.md, its studies' files (thresholds, settings) or a report.md the
    reading links: the prose can round the tables, not add to them."""
    begin, end = readme_markers(name)
    block = README.split(begin, 1)[1].split(end, 1)[0]
    written = re.search(r"study report ((?:\w+ )+)--out (\S+) ", block)
    assert written, f"block {name} does not say which report it was written from"
    studies, out = written.group(1).split(), written.group(2)
    reading = _reading(name)
    texts = [block, (ROOT / out / "report.md").read_text()]
    texts += [(ROOT / "search_spaces" / f"{s}.yaml").read_text() for s in studies]
    texts += [(ROOT / link).read_text() for link in LINKED_REPORT.findall(reading)]
    sources = [float(x) for text in texts for x in DECIMAL.findall(text)]
    unsourced = sorted({x for x in DECIMAL.findall(reading) if not _prints(x, sources)})
    assert not unsourced, f"{name}'s Reading prints numbers no source prints: {unsourced}"
