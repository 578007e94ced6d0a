"""The report of finished studies: Markdown with figures, the checks of each study's
pre-registered expectations (effect, 95 % CI, p, n, verdict), and the same numbers as JSON.

    python -m study report claim5_forgetting --out reports/        # one study
    python -m study report claim1_not_invariant claim5_forgetting   # one report, both studies

`build_report` reads each study from MLflow through `results.py` only, runs the analyses its
study file names (`report:`; `analyses.py`), and writes (what the checks say is worked out in
`report_model.py`, the Markdown in `report_markdown.py`)

    DIR/report.md              the checks by source (the paper's claims, our hypotheses, the
                               instrument checks), then each study's sections
    DIR/report.json            studies, trial counts, run times, checks with their numbers:
                               source, expectation, min_effect, effect, ci_low, ci_high, p,
                               p_holm, n, method, verdict, shared_with, run_ids; and
                               `budgets`: each paper check of a study `S` beside the same
                               check of its sibling `S_paper` (the paper-faithful budget)
    DIR/<study>/report.md      that study alone, beside its figures (DIR/<study>/*.png)

With `readme=README.md` it also rewrites the part of that file between the markers
`<!-- results:begin -->` and `<!-- results:end -->` (with `readme_block=NAME`, between
`<!-- NAME:begin -->` and `<!-- NAME:end -->`): the verdicts by source, the checks, the
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

import json
import math
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from transinv.analyses import ANALYSES
from transinv.report_markdown import (
    README_BLOCK,
    render_study,
    render_summary,
    write_readme_section,
)
from transinv.report_model import (
    METHODS,
    StudyReport,
    analyses_of,
    budget_pairs,
    figure_file,
    load_study,
    mark_shared,
    verdict_counts,
    with_study_holm,
)
from transinv.results import tracking_uri
from transinv.tracking import Tracker


def build_report(
    studies: Sequence[str],
    uri: str | None,
    out: str | Path,
    analyses: Sequence[str] | None = None,
    log_to_mlflow: bool = True,
    readme: str | Path | None = None,
    readme_block: str = README_BLOCK,
) -> Path:
    """Write the report of `studies` into `out` (see the module docstring); returns
    `out/report.md`."""
    uri = tracking_uri(uri)
    out = Path(out)
    reports = []
    for study in studies:
        data, counts, wall, trial = load_study(study, uri)
        sections = [ANALYSES[name](data) for name in analyses_of(data.info, analyses)]
        reports.append(StudyReport(data, with_study_holm(sections), counts, wall, trial))
    mark_shared(reports)
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    for report in reports:
        folder = out / report.name
        folder.mkdir(parents=True, exist_ok=True)
        for section in report.sections:
            for name, figure in section.figures.items():
                figure.savefig(folder / figure_file(section, name), dpi=100)
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
                "budgets": [pair.to_json() for pair in budget_pairs(reports)],
                "studies": [_json(r) for r in reports],
            }
        )
    )
    if readme is not None:
        write_readme_section(Path(readme), reports, out, generated, readme_block)
    if log_to_mlflow:
        tracker = Tracker(uri)
        for report in reports:
            tracker.log_folder(report.data.info["run_id"], out / report.name, "report")
    return out / "report.md"


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
                "figures": [figure_file(s, n) for n in s.figures],
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
