"""The report in Markdown: the summary (methods, verdicts counted by source, one table per
source, the paper's claims under both budgets, the claims quoted), each study's sections with
their tables and figures, and the README's results block between its markers.

Every number comes from `report_model.py`; nothing here computes a statistic.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from transinv.analyses import Check
from transinv.analyses.base import feature_maps
from transinv.analyses.expectations import (
    CONTRADICTED,
    NOT_SHOWN,
    PAPER,
    VERDICTS,
    Expectation,
)
from transinv.config import ConfigError
from transinv.report_model import (
    HEATMAP_PREFIX,
    METHODS,
    PAPER_BUDGET_SUFFIX,
    SOURCE_TITLES,
    StudyReport,
    budget_pairs,
    figure_file,
    status_counts,
    verdict_counts,
)

VERDICT_MARK = {CONTRADICTED: "**contradicted**", NOT_SHOWN: "not shown"}

BUDGETS_TITLE = "The paper's claims under both budgets"
BUDGETS_NOTE = (
    f"Each study `S` and its sibling `S{PAPER_BUDGET_SUFFIX}` (the same conditions, seeds and "
    "pre-registered checks under the paper-faithful budget, `base/paper_settings.yaml`) side "
    "by side, one row per `paper` check the two share; the difference is the paper budget's "
    "effect minus the small budget's. Verdicts are each study's own (Holm within the study)."
)


def render_summary(reports: Sequence[StudyReport], uri: str, generated: str) -> str:
    lines = [
        "# transinv report",
        "",
        f"_Generated {generated} from {uri} by `python -m study report "
        f"{' '.join(r.name for r in reports)}`._",
        "",
        METHODS,
        "",
        *_counts_table(reports),
    ]
    for source, title in SOURCE_TITLES.items():
        lines += ["", f"## {title}", "", *_checks_table(reports, source)]
    budgets = _budgets_table(reports)
    if budgets:
        lines += ["", f"## {BUDGETS_TITLE}", "", BUDGETS_NOTE, "", *budgets]
    lines += ["", *_claims_quoted(reports)]
    lines += ["", "| study | trials | wall time | trial time |", "| --- | --- | --- | --- |"]
    for report in reports:
        counts = status_counts(report)
        lines.append(
            f"| {report.name} | {counts or 'none'} | {_duration(report.wall_s)} | "
            f"{_duration(report.trial_s)} |"
        )
    return "\n".join(lines) + "\n\n"


def _counts_table(reports: Sequence[StudyReport]) -> list[str]:
    counts = verdict_counts(reports)
    shown = [v for v in VERDICTS if any(v in c for c in counts.values())]
    lines = [
        "| source | " + " | ".join(shown) + " |",
        "| --- | " + " | ".join("---" for _ in shown) + " |",
    ]
    for source, c in counts.items():
        lines.append(f"| {source} | " + " | ".join(str(c.get(v, 0)) for v in shown) + " |")
    return lines


def _expected(check: Check) -> str:
    return Expectation(check.direction, check.min_effect).text()


def _num(value: float, digits: int = 2) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:+.{digits}f}"


def _p(value: float) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def _effect_cell(check: Check) -> str:
    return f"{_num(check.effect)} [{_num(check.ci_low)}, {_num(check.ci_high)}]"


def _n_cell(check: Check) -> str:
    return "/".join(map(str, check.n)) or "0"


def _verdict_cell(check: Check) -> str:
    return VERDICT_MARK.get(check.verdict, check.verdict)


def _check_cells(check: Check) -> str:
    p = _p(check.p) + (f" (Holm {_p(check.p_holm)})" if check.source == PAPER else "")
    return (
        f"`{check.name}` | {_cell(check.expectation)} | {_expected(check)} | "
        f"{_cell(check.measured)} | {_effect_cell(check)} | {p} | {_n_cell(check)} | "
        f"{_verdict_cell(check)} | {len(check.shared_with)} |"
    )


CHECK_HEADER = (
    "check | expectation | pre-registered | measured | effect [95% CI] | p | n | verdict | "
    "shares trials with |"
)


def _checks_table(reports: Sequence[StudyReport], source: str) -> list[str]:
    """Every check of `source` in every study, one row each."""
    rows = [
        f"| `{report.name}` | {_check_cells(check)}"
        for report in reports
        for section in report.sections
        for check in section.checks
        if check.source == source
    ]
    if not rows:
        return ["_(none in these studies)_"]
    rule = "| --- " * (CHECK_HEADER.count("|") + 1) + "|"
    return [f"| study | {CHECK_HEADER}", rule, *rows]


def _budgets_table(reports: Sequence[StudyReport]) -> list[str]:
    pairs = budget_pairs(reports)
    if not pairs:
        return []
    lines = [
        "| study | check | small budget: effect [95% CI] | n | verdict | paper budget: effect "
        "[95% CI] | n | verdict | difference |",
        "| --- " * 9 + "|",
    ]
    for pair in pairs:
        lines.append(
            f"| `{pair.study}` | `{pair.small.name}` | "
            + " | ".join(
                f"{_effect_cell(c)} | {_n_cell(c)} | {_verdict_cell(c)}"
                for c in (pair.small, pair.paper)
            )
            + f" | {_num(pair.difference)} |"
        )
    return lines


def _claims_quoted(reports: Sequence[StudyReport]) -> list[str]:
    """Each paper claim, quoted as ../shared/paper.md states it, with the checks that test it."""
    claims: dict[str, list[str]] = {}
    for report in reports:
        for section in report.sections:
            for check in section.checks:
                if check.source == PAPER:
                    claims.setdefault(check.claim, []).append(f"`{report.name}:{check.name}`")
    if not claims:
        return []
    lines = ["The paper's claims tested here, as the paper's abstracts state them:", ""]
    for claim, names in claims.items():
        lines.append(f'- "{claim}" Tested by {", ".join(names)}.')
    return lines


def render_study(report: StudyReport, prefix: str) -> str:
    info = report.data.info
    runs = report.data.runs
    seeds = ", ".join(map(str, sorted(runs["seed"].unique()))) if "seed" in runs else "?"
    counts = status_counts(report)
    lines = [
        f"## Study `{report.name}`",
        "",
        f"Study file `search_spaces/{info.get('space_file', '?')}`, sampler "
        f"{info.get('sampler', '?')}; trials: {counts or 'none'}; seeds {seeds}; "
        f"conditions vary {', '.join(f'`{c}`' for c in report.data.conditions) or 'nothing'}. "
        f"Wall time {_duration(report.wall_s)} with a trial running (trials "
        f"{_duration(report.trial_s)} in all). "
        f"Parent run `{info['run_id']}`.",
        "",
    ]
    maps = feature_maps(runs)
    if maps:
        lines += [
            "Final feature map: " + "; ".join(f"{k}: {v}" for k, v in maps.items()) + ".",
            "",
        ]
    for section in report.sections:
        lines += [f"### {section.title}", "", f"*{section.question}*", ""]
        if section.checks:
            rule = "| --- " * (CHECK_HEADER.count("|") + 1) + "|"
            lines += [f"| source | {CHECK_HEADER}", rule]
            for check in section.checks:
                lines.append(f"| {check.source} | {_check_cells(check)}")
            lines.append("")
            shared = [c for c in section.checks if c.shared_with]
            for check in shared:
                lines.append(f"- `{check.name}` shares trials with {', '.join(check.shared_with)}.")
            lines += [""] if shared else []
        for note in section.notes:
            lines += [note, ""]
        for title, table in section.tables:
            lines += [f"**{title}**", "", markdown_table(table), ""]
        maps = [n for n in section.figures if n.startswith(HEATMAP_PREFIX)]
        for name in section.figures:
            if name not in maps:
                path = f"{prefix}{figure_file(section, name)}"
                lines += [f"![{section.analysis}: {name}]({path})", ""]
        if maps:  # small multiples: three accuracy maps a row
            lines += [
                "".join(
                    f'<img src="{prefix}{figure_file(section, n)}" width="32%" alt="{n}">'
                    for n in maps
                ),
                "",
            ]
    return "\n".join(lines) + "\n"


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub Markdown table; floats with 3 significant digits, NaN as n/a."""
    if frame.empty:
        return "_(no rows)_"
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    rows = [
        "| " + " | ".join(_cell(_fmt(v)) for v in row) + " |" for row in frame.itertuples(False)
    ]
    return "\n".join([header, rule, *rows])


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.3g}"
    if isinstance(value, tuple):
        return ",".join(_fmt(v) for v in value)
    return str(value)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "n/a"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


README_BLOCK = "results"


def readme_markers(block: str = README_BLOCK) -> tuple[str, str]:
    """The lines that open and close README block `block`: `<!-- results:begin -->` for the
    default, `<!-- NAME:begin -->` for another, so one README can hold the results of several
    reports (say the paper's claims and a study beyond them), each rewritten by its own command."""
    return f"<!-- {block}:begin -->", f"<!-- {block}:end -->"


def write_readme_section(
    readme: Path,
    reports: Sequence[StudyReport],
    out: Path,
    generated: str,
    block: str = README_BLOCK,
) -> None:
    """Replace the text between the markers of `block` in `readme` (which must hold both)."""
    begin, end = readme_markers(block)
    text = readme.read_text()
    if begin not in text or end not in text:
        raise ConfigError(
            f"{readme} has no {block!r} markers: add a line {begin} and a line {end} where "
            "that results section goes"
        )
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    figures = Path(os.path.relpath(out.resolve(), readme.resolve().parent))
    body = render_readme(reports, figures, generated, block)
    readme.write_text(f"{head}{begin}\n{body}{end}{tail}")


def render_readme(
    reports: Sequence[StudyReport], figures: Path, generated: str, block: str = README_BLOCK
) -> str:
    names = " ".join(r.name for r in reports)
    named = "" if block == README_BLOCK else f" --readme-block {block}"
    lines = [
        f"<!-- written by `python -m study report {names} --out {figures} --readme ...{named}` "
        f"on {generated}; edits here are overwritten -->",
        "",
        METHODS,
        "",
        "Verdicts by source (checks on exactly the same trials count once):",
        "",
        *_counts_table(reports),
        "",
    ]
    for source, title in SOURCE_TITLES.items():
        lines += [f"**{title}**", "", *_checks_table(reports, source), ""]
    budgets = _budgets_table(reports)
    if budgets:
        lines += [f"**{BUDGETS_TITLE}**", "", BUDGETS_NOTE, "", *budgets, ""]
    lines += [*_claims_quoted(reports), ""]
    images = [
        (report, section)
        for report in reports
        for section in report.sections
        if section.headline_figure
    ]
    for report, section in images:
        path = figures / report.name / figure_file(section, section.headline_figure)
        lines.append(f'<img src="{path.as_posix()}" width="49%" alt="{section.title}">')
    lines += ["", "| study | trials | wall time on this machine |", "| --- | --- | --- |"]
    for report in reports:
        counts = status_counts(report)
        lines.append(f"| `{report.name}` | {counts} | {_duration(report.wall_s)} |")
    total = sum(r.wall_s for r in reports if math.isfinite(r.wall_s))
    lines.append(f"| all | {sum(sum(r.counts.values()) for r in reports)} | {_duration(total)} |")
    return "\n".join(lines) + "\n"
