"""The report of finished studies: Markdown with figures, a table per claim saying what was
measured and whether the paper's claim held, and the same numbers as JSON.

    python -m study report claim5_forgetting --out reports/        # one study
    python -m study report claim1_not_invariant claim5_forgetting   # one report, both studies

`build_report` reads each study from MLflow through `results.py` only, runs the analyses its
study file names (`report:`; `analyses.py`), and writes

    DIR/report.md              a summary table of every check, then each study's sections
    DIR/report.json            studies, trial counts, run times, checks with their numbers
    DIR/<study>/report.md      that study alone, beside its figures (DIR/<study>/*.png)

With `readme=README.md` it also rewrites the part of that file between the markers
`<!-- results:begin -->` and `<!-- results:end -->`: the checks, the headline figure of each
section and the run times, so a project's results section is always the report's own words.

and logs each study's folder (its report, figures and JSON) to the study's parent run under
`report/`, so the MLflow UI shows the report beside the trials it came from.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from transinv.analyses import ANALYSES, Section, StudyData
from transinv.config import ConfigError
from transinv.results import load_runs, study_info, tracking_uri
from transinv.tracking import Tracker

HEATMAP_PREFIX = "heatmap_"
VERDICT_MARK = {"held": "held", "partly": "partly", "not held": "**not held**"}


@dataclass
class StudyReport:
    data: StudyData
    sections: list[Section]
    counts: dict[str, int]
    """Trial runs by status."""
    wall_s: float
    """First trial start to last trial end (NaN without finished trials)."""
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
        wall = (finished["end_time"].max() - finished["start_time"].min()).total_seconds()
        trial = (finished["end_time"] - finished["start_time"]).dt.total_seconds().sum()
    else:
        wall = trial = math.nan
    return StudyData(study, finished, info), counts, float(wall), float(trial)


def analyses_of(info: pd.Series, override: Sequence[str] | None = None) -> list[str]:
    """The analyses to run: `override`, else those the study file names (`report:`)."""
    names = list(override) if override else [n for n in str(info.get("report", "")).split(",") if n]
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


def build_report(
    studies: Sequence[str],
    uri: str | None,
    out: str | Path,
    analyses: Sequence[str] | None = None,
    log_to_mlflow: bool = True,
    readme: str | Path | None = None,
) -> Path:
    """Write the report of `studies` into `out` (see the module docstring); returns
    `out/report.md`."""
    uri = tracking_uri(uri)
    out = Path(out)
    reports = []
    for study in studies:
        data, counts, wall, trial = load_study(study, uri)
        sections = [ANALYSES[name](data) for name in analyses_of(data.info, analyses)]
        reports.append(StudyReport(data, sections, counts, wall, trial))
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    for report in reports:
        folder = out / report.name
        folder.mkdir(parents=True, exist_ok=True)
        for section in report.sections:
            for name, figure in section.figures.items():
                figure.savefig(folder / _figure_file(section, name), dpi=100)
        header = f"# transinv report: {report.name}\n\n_Generated {generated} from {uri}._\n\n"
        (folder / "report.md").write_text(header + render_study(report, prefix=""))
        (folder / "report.json").write_text(json.dumps(_json(report), indent=2, default=_plain))
    summary = render_summary(reports, uri, generated)
    body = "\n".join(render_study(r, prefix=f"{r.name}/") for r in reports)
    (out / "report.md").write_text(summary + body)
    (out / "report.json").write_text(
        json.dumps(
            {"generated": generated, "tracking_uri": uri, "studies": [_json(r) for r in reports]},
            indent=2,
            default=_plain,
        )
    )
    if readme is not None:
        write_readme_section(Path(readme), reports, out, generated)
    if log_to_mlflow:
        tracker = Tracker(uri)
        for report in reports:
            tracker.log_folder(report.data.info["run_id"], out / report.name, "report")
    return out / "report.md"


def _counts(report: StudyReport) -> str:
    """`18 finished, 1 failed`: the study's trial runs by status."""
    return ", ".join(f"{n} {status.lower()}" for status, n in sorted(report.counts.items()))


def _figure_file(section: Section, name: str) -> str:
    return f"{section.analysis}_{name}"


# ---------------------------------------------------------------------------------------------
# Markdown.


def render_summary(reports: Sequence[StudyReport], uri: str, generated: str) -> str:
    lines = [
        "# transinv report",
        "",
        f"_Generated {generated} from {uri} by `python -m study report "
        f"{' '.join(r.name for r in reports)}`._",
        "",
        "## The claims, checked",
        "",
        *_checks_table(reports),
    ]
    lines += ["", "| study | trials | wall time | trial time |", "| --- | --- | --- | --- |"]
    for report in reports:
        counts = _counts(report)
        lines.append(
            f"| {report.name} | {counts or 'none'} | {_duration(report.wall_s)} | "
            f"{_duration(report.trial_s)} |"
        )
    return "\n".join(lines) + "\n\n"


def _checks_table(reports: Sequence[StudyReport]) -> list[str]:
    """Every check of every study, one row each."""
    lines = ["| study | expectation | measured | verdict |", "| --- | --- | --- | --- |"]
    for report in reports:
        for section in report.sections:
            for check in section.checks:
                lines.append(
                    f"| `{report.name}` | {_cell(check.expectation)} | {_cell(check.measured)} | "
                    f"{VERDICT_MARK.get(check.verdict, check.verdict)} |"
                )
    return lines


def render_study(report: StudyReport, prefix: str) -> str:
    info = report.data.info
    runs = report.data.runs
    seeds = ", ".join(map(str, sorted(runs["seed"].unique()))) if "seed" in runs else "?"
    counts = _counts(report)
    lines = [
        f"## Study `{report.name}`",
        "",
        f"Study file `search_spaces/{info.get('space_file', '?')}`, sampler "
        f"{info.get('sampler', '?')}; trials: {counts or 'none'}; seeds {seeds}; "
        f"conditions vary {', '.join(f'`{c}`' for c in report.data.conditions) or 'nothing'}. "
        f"Wall time {_duration(report.wall_s)} (trials {_duration(report.trial_s)} in all). "
        f"Parent run `{info['run_id']}`.",
        "",
    ]
    for section in report.sections:
        lines += [f"### {section.title}", "", f"*{section.question}*", ""]
        if section.checks:
            lines += ["| expectation | measured | verdict |", "| --- | --- | --- |"]
            for check in section.checks:
                verdict = VERDICT_MARK.get(check.verdict, check.verdict)
                lines.append(
                    f"| {_cell(check.expectation)} | {_cell(check.measured)} | {verdict} |"
                )
            lines.append("")
        for note in section.notes:
            lines += [note, ""]
        for title, table in section.tables:
            lines += [f"**{title}**", "", markdown_table(table), ""]
        maps = [n for n in section.figures if n.startswith(HEATMAP_PREFIX)]
        for name in section.figures:
            if name not in maps:
                path = f"{prefix}{_figure_file(section, name)}"
                lines += [f"![{section.analysis}: {name}]({path})", ""]
        if maps:  # small multiples: three accuracy maps a row
            lines += [
                "".join(
                    f'<img src="{prefix}{_figure_file(section, n)}" width="32%" alt="{n}">'
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


README_BEGIN, README_END = "<!-- results:begin -->", "<!-- results:end -->"


def write_readme_section(
    readme: Path, reports: Sequence[StudyReport], out: Path, generated: str
) -> None:
    """Replace the text between the results markers of `readme` (which must hold both)."""
    text = readme.read_text()
    if README_BEGIN not in text or README_END not in text:
        raise ConfigError(
            f"{readme} has no results markers: add a line {README_BEGIN} and a line "
            f"{README_END} where the results section goes"
        )
    head, rest = text.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    figures = Path(os.path.relpath(out.resolve(), readme.resolve().parent))
    body = render_readme(reports, figures, generated)
    readme.write_text(f"{head}{README_BEGIN}\n{body}{README_END}{tail}")


def render_readme(reports: Sequence[StudyReport], figures: Path, generated: str) -> str:
    names = " ".join(r.name for r in reports)
    lines = [
        f"<!-- written by `python -m study report {names} --out {figures} --readme ...` on "
        f"{generated}; edits here are overwritten -->",
        "",
        *_checks_table(reports),
        "",
    ]
    images = [
        (report, section)
        for report in reports
        for section in report.sections
        if section.headline_figure
    ]
    for report, section in images:
        path = figures / report.name / _figure_file(section, section.headline_figure)
        lines.append(f'<img src="{path.as_posix()}" width="49%" alt="{section.title}">')
    lines += ["", "| study | trials | wall time on this machine |", "| --- | --- | --- |"]
    for report in reports:
        counts = _counts(report)
        lines.append(f"| `{report.name}` | {counts} | {_duration(report.wall_s)} |")
    total = sum(r.wall_s for r in reports if math.isfinite(r.wall_s))
    lines.append(f"| all | {sum(sum(r.counts.values()) for r in reports)} | {_duration(total)} |")
    misses = [
        (report, check)
        for report in reports
        for section in report.sections
        for check in section.checks
        if check.verdict in ("not held", "partly")
    ]
    if misses:
        lines += ["", "Where the expectation did not hold, or only partly:", ""]
        for report, check in misses:
            lines.append(
                f"- `{report.name}`: {check.expectation}: {check.measured} ({check.verdict})."
            )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# JSON.


def _json(report: StudyReport) -> dict:
    return {
        "name": report.name,
        "parent_run_id": report.data.info["run_id"],
        "trials": report.counts,
        "wall_s": report.wall_s,
        "trial_s": report.trial_s,
        "run_ids": list(report.data.runs["run_id"]),
        "sections": [
            {
                "analysis": s.analysis,
                "title": s.title,
                "checks": [asdict(c) for c in s.checks],
                "tables": [
                    {"title": t, "rows": table.to_dict(orient="records")} for t, table in s.tables
                ],
                "figures": [_figure_file(s, n) for n in s.figures],
                "notes": s.notes,
            }
            for s in report.sections
        ],
    }


def _plain(value: object) -> object:
    """JSON for what `json` does not know: numpy scalars, tuples as lists, NaN as null."""
    if hasattr(value, "item"):
        value = value.item()
        return None if isinstance(value, float) and math.isnan(value) else value
    return str(value)
