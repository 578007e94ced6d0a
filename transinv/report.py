"""The report of finished studies: Markdown with figures, the checks of each study's
pre-registered expectations (effect, 95 % CI, p, n, verdict), and the same numbers as JSON.

    python -m study report claim5_forgetting --out reports/        # one study
    python -m study report claim1_not_invariant claim5_forgetting   # one report, both studies

`build_report` reads each study from MLflow through `results.py` only, runs the analyses its
study file names (`report:`; `analyses.py`), and writes

    DIR/report.md              the checks by source (the paper's claims, our hypotheses, the
                               instrument checks), then each study's sections
    DIR/report.json            studies, trial counts, run times, checks with their numbers:
                               source, expectation, min_effect, effect, ci_low, ci_high, p,
                               p_holm, n, method, verdict, shared_with, run_ids; and
                               `budgets`: each paper check of a study `S` beside the same
                               check of its sibling `S_paper` (the paper-faithful budget)
    DIR/<study>/report.md      that study alone, beside its figures (DIR/<study>/*.png)

With `readme=README.md` it also rewrites the part of that file between the markers
`<!-- results:begin -->` and `<!-- results:end -->`: the verdicts by source, the checks, the
headline figure of each section and the run times, so a project's results section is always
the report's own words.

Statistics (one paragraph, `METHODS`, printed in every report): Welch's t for differences of
group means, one-sample or paired t for per-run quantities, a seed bootstrap with permutation p
for rank correlations, an exact binomial test for fractions of runs; Holm's correction over
each study's `paper` checks, whose verdicts use the adjusted p. Checks resting on some of the
same trials (same config and seed, in any study: the pretraining cache makes them identical)
name each other in `shared_with`; checks on exactly the same trials count once in the summary.

and logs each study's folder (its report, figures and JSON) to the study's parent run under
`report/`, so the MLflow UI shows the report beside the trials it came from.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from transinv import stats
from transinv.analyses import ANALYSES, Check, Section, StudyData, plan_from_param, with_holm
from transinv.analyses.base import feature_maps, trial_key
from transinv.analyses.expectations import (
    CONTRADICTED,
    HYPOTHESIS,
    NOT_SHOWN,
    PAPER,
    SANITY,
    VERDICTS,
    Expectation,
)
from transinv.config import ConfigError
from transinv.results import load_runs, study_info, tracking_uri
from transinv.tracking import Tracker

HEATMAP_PREFIX = "heatmap_"
VERDICT_MARK = {CONTRADICTED: "**contradicted**", NOT_SHOWN: "not shown"}
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
        reports.append(StudyReport(data, _with_holm(sections), counts, wall, trial))
    _share(reports)
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    for report in reports:
        folder = out / report.name
        folder.mkdir(parents=True, exist_ok=True)
        for section in report.sections:
            for name, figure in section.figures.items():
                figure.savefig(folder / _figure_file(section, name), dpi=100)
        header = f"# transinv report: {report.name}\n\n_Generated {generated} from {uri}._\n\n"
        (folder / "report.md").write_text(header + render_study(report, prefix=""))
        (folder / "report.json").write_text(_dumps(_json(report)))
    summary = render_summary(reports, uri, generated)
    body = "\n".join(render_study(r, prefix=f"{r.name}/") for r in reports)
    (out / "report.md").write_text(summary + body)
    (out / "report.json").write_text(
        _dumps(
            {
                "generated": generated,
                "tracking_uri": uri,
                "methods": METHODS,
                "summary": verdict_counts(reports),
                "budgets": budget_pairs(reports),
                "studies": [_json(r) for r in reports],
            }
        )
    )
    if readme is not None:
        write_readme_section(Path(readme), reports, out, generated)
    if log_to_mlflow:
        tracker = Tracker(uri)
        for report in reports:
            tracker.log_folder(report.data.info["run_id"], out / report.name, "report")
    return out / "report.md"


def _with_holm(sections: Sequence[Section]) -> list[Section]:
    """Holm over the study's `paper` checks, across its sections."""
    checks = with_holm([c for s in sections for c in s.checks])
    out = []
    for section in sections:
        mine, checks = checks[: len(section.checks)], checks[len(section.checks) :]
        out.append(dataclasses.replace(section, checks=mine))
    return out


def _share(reports: Sequence[StudyReport]) -> None:
    """Fill each check's `shared_with`: the other checks of the report that rest on some of the
    same trials (a trial = config and seed, so the same trial run by two studies counts)."""
    key_of = {
        run_id: trial_key(row)
        for report in reports
        for run_id, row in report.data.runs.set_index("run_id", drop=False).iterrows()
    }
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


def _trial_set(report: StudyReport, check: Check) -> frozenset[str]:
    runs = report.data.runs.set_index("run_id", drop=False)
    return frozenset(trial_key(runs.loc[r]) if r in runs.index else r for r in check.run_ids)


def verdict_counts(reports: Sequence[StudyReport]) -> dict[str, dict[str, int]]:
    """Verdicts per source; checks with the same source and verdict on exactly the same trials
    count once (one piece of evidence, however many checks read it)."""
    seen: set[tuple] = set()
    counts: dict[str, dict[str, int]] = {s: dict.fromkeys(VERDICTS, 0) for s in SOURCE_TITLES}
    for report in reports:
        for section in report.sections:
            for check in section.checks:
                trials = _trial_set(report, check)
                key = (check.source, check.verdict, trials or (report.name, check.name))
                if key in seen:
                    continue
                seen.add(key)
                counts[check.source][check.verdict] += 1
    return {s: {v: n for v, n in c.items() if n} for s, c in counts.items()}


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
        counts = _counts(report)
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


def _check_cells(check: Check) -> str:
    ci = f"[{_num(check.ci_low)}, {_num(check.ci_high)}]"
    p = _p(check.p) + (f" (Holm {_p(check.p_holm)})" if check.source == PAPER else "")
    n = "/".join(map(str, check.n)) or "0"
    verdict = VERDICT_MARK.get(check.verdict, check.verdict)
    return (
        f"`{check.name}` | {_cell(check.expectation)} | {_expected(check)} | "
        f"{_cell(check.measured)} | {_num(check.effect)} {ci} | {p} | {n} | {verdict} | "
        f"{len(check.shared_with)} |"
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


PAPER_BUDGET_SUFFIX = "_paper"
BUDGETS_TITLE = "The paper's claims under both budgets"
BUDGETS_NOTE = (
    f"Each study `S` and its sibling `S{PAPER_BUDGET_SUFFIX}` (the same conditions, seeds and "
    "pre-registered checks under the paper-faithful budget, `base/paper_settings.yaml`) side "
    "by side, one row per `paper` check the two share; the difference is the paper budget's "
    "effect minus the small budget's. Verdicts are each study's own (Holm within the study)."
)


def budget_pairs(reports: Sequence[StudyReport]) -> list[dict]:
    """Each `paper` check of a study whose `_paper` sibling is also in `reports`, with both
    budgets' numbers (report.json's `budgets`)."""
    by_name = {r.name: r for r in reports}
    rows = []
    for paper in reports:
        small = by_name.get(paper.name.removesuffix(PAPER_BUDGET_SUFFIX))
        if not paper.name.endswith(PAPER_BUDGET_SUFFIX) or small is None:
            continue
        theirs = {c.name: c for s in paper.sections for c in s.checks if c.source == PAPER}
        for check in (c for s in small.sections for c in s.checks if c.source == PAPER):
            other = theirs.get(check.name)
            if other is None:
                continue
            rows.append(
                {
                    "study": small.name,
                    "check": check.name,
                    "small": _budget_numbers(check),
                    "paper": _budget_numbers(other),
                    "difference": other.effect - check.effect,
                }
            )
    return rows


def _budget_numbers(check: Check) -> dict:
    keys = ("effect", "ci_low", "ci_high", "p_holm", "n", "verdict")
    return {k: getattr(check, k) for k in keys}


def _budgets_table(reports: Sequence[StudyReport]) -> list[str]:
    rows = budget_pairs(reports)
    if not rows:
        return []

    def cells(numbers: dict) -> str:
        ci = f"[{_num(numbers['ci_low'])}, {_num(numbers['ci_high'])}]"
        n = "/".join(map(str, numbers["n"])) or "0"
        verdict = VERDICT_MARK.get(numbers["verdict"], numbers["verdict"])
        return f"{_num(numbers['effect'])} {ci} | {n} | {verdict}"

    lines = [
        "| study | check | small budget: effect [95% CI] | n | verdict | paper budget: effect "
        "[95% CI] | n | verdict | difference |",
        "| --- " * 9 + "|",
    ]
    for row in rows:
        lines.append(
            f"| `{row['study']}` | `{row['check']}` | {cells(row['small'])} | "
            f"{cells(row['paper'])} | {_num(row['difference'])} |"
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
        path = figures / report.name / _figure_file(section, section.headline_figure)
        lines.append(f'<img src="{path.as_posix()}" width="49%" alt="{section.title}">')
    lines += ["", "| study | trials | wall time on this machine |", "| --- | --- | --- |"]
    for report in reports:
        counts = _counts(report)
        lines.append(f"| `{report.name}` | {counts} | {_duration(report.wall_s)} |")
    total = sum(r.wall_s for r in reports if math.isfinite(r.wall_s))
    lines.append(f"| all | {sum(sum(r.counts.values()) for r in reports)} | {_duration(total)} |")
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
                "method_note": METHODS if s.checks else "",
                "tables": [
                    {"title": t, "rows": table.to_dict(orient="records")} for t, table in s.tables
                ],
                "figures": [_figure_file(s, n) for n in s.figures],
                "notes": s.notes,
            }
            for s in report.sections
        ],
    }


def _dumps(data: object) -> str:
    """Strict JSON: NaN and infinities become null (json would write bare NaN)."""
    return json.dumps(_finite(data), indent=2, default=_plain, allow_nan=False)


def _finite(value: object) -> object:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str):
        return _finite(value.item())
    return value


def _plain(value: object) -> object:
    """JSON for what `json` does not know: numpy scalars, tuples as lists, NaN as null."""
    if hasattr(value, "item"):
        value = value.item()
        return None if isinstance(value, float) and math.isnan(value) else value
    return str(value)
