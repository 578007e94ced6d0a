"""A miniature of every paper study, run through the real CLI (one driver, real local Ray, a
real MLflow server), then reported: the report has a section per study and analysis, every
figure it names exists, and its numbers are the ones MLflow holds.

Miniatures keep each study file's analyses, conditions and base budget, but shrink the sizes
(32 px canvas, tens of steps), keep two values per grid axis and two seeds. The scientific
outcome of a miniature means nothing and is not asserted; the report's structure and its
faithfulness to MLflow are.

    .venv/bin/pytest tests/test_report.py -q        # ~3 min on 2 cores
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from study import cli
from study.space import load_space
from transinv import metrics
from transinv.analyses import ANALYSES
from transinv.analyses.expectations import VERDICTS
from transinv.results import load_runs

pytestmark = pytest.mark.slow(minutes=12)

SPACES = Path(__file__).resolve().parents[1] / "search_spaces"
# Studies with a report that run on this CPU machine (paper_scale needs GPUs and ImageNet weights);
# the *_paper siblings run the same analyses under another budget, so their miniatures would
# test nothing new.
PAPER_STUDIES = sorted(
    p
    for p in SPACES.glob("*.yaml")
    if load_space(p).report and load_space(p).gpu == 0 and not p.stem.endswith("_paper")
)
MINI_FIXED = {
    "canvas.size": 32,
    "canvas.item_size": 8,
    "pretrain.steps": 30,
    "finetune.steps": 20,
    "optim.batch_size": 16,
    "eval.points": 4,
    "eval.items": 16,
    "eval.pretrain_items": 32,
    "eval.grid_step": 0.25,
    "run.threads": 1,
    # The per-evaluation maps are tested in test_runlog.py and test_study.py; here they would be
    # a third of each miniature trial's CPU.
    "run.heatmaps": "none",
}
STEP_KEYS = ("pretrain.steps", "finetune.steps")


def miniature(path: Path, folder: Path) -> Path:
    """The study file with tiny sizes, two values per grid axis and two seeds."""
    raw = yaml.safe_load(path.read_text())
    raw["study"] = f"mini_{raw['study']}"
    if "base" in raw:
        raw["base"] = str((path.parent / raw["base"]).resolve())
    space = raw["space"]
    raw["fixed"] = {
        k: v for k, v in {**raw.get("fixed", {}), **MINI_FIXED}.items() if k not in space
    }
    for key, domain in space.items():
        if "grid" in domain:
            values = domain["grid"][:2]
            domain["grid"] = [min(v, 10) if key in STEP_KEYS else v for v in values]
        elif "int" in domain and key in STEP_KEYS:
            domain.update({"int": [10, 30], "step": 10})
    if raw.get("repeat"):
        raw["samples"] = 2 * raw["repeat"]  # two suggestions
    out = folder / path.name
    out.write_text(yaml.safe_dump(raw, sort_keys=False))
    return out


@pytest.fixture(scope="module")
def ran(tmp_path_factory, tracking_uri):
    """Every miniature, in one `python -m study run` (one Ray start): (names, output)."""
    folder = tmp_path_factory.mktemp("mini")
    files = [miniature(p, folder) for p in PAPER_STUDIES]
    env = {**os.environ, "TRANSINV_HOME": str(folder / "home"), "RAY_USAGE_STATS_ENABLED": "0"}
    done = subprocess.run(
        [sys.executable, "-m", "study", "run", *map(str, files), "--tracking-uri", tracking_uri],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-6000:]
    return [load_space(f).name for f in files], done.stdout


@pytest.fixture(scope="module")
def report(ran, tracking_uri, tmp_path_factory):
    names, _ = ran
    out = tmp_path_factory.mktemp("report")
    assert cli.main(["report", *names, "--out", str(out), "--tracking-uri", tracking_uri]) == 0
    return out, json.loads((out / "report.json").read_text())


def test_every_paper_study_names_its_analyses():
    assert {a for p in PAPER_STUDIES for a in load_space(p).report} == set(ANALYSES)


def test_one_driver_runs_every_miniature(ran):
    names, out = ran
    for name in names:
        assert f"study {name}: " in out and " 0 errored" in out.split(f"study {name}: ")[1][:80]


def test_report_has_a_section_per_study_and_analysis_with_its_figures(report, ran):
    out, data = report
    names, _ = ran
    assert [s["name"] for s in data["studies"]] == names
    text = (out / "report.md").read_text()
    assert text.startswith("# transinv report") and "## The paper's claims" in text
    assert "## Instrument checks" in text and "Holm" in text
    verdicts = set(VERDICTS)
    for study in data["studies"]:
        spec = load_space(SPACES / f"{study['name'].removeprefix('mini_')}.yaml")
        assert [s["analysis"] for s in study["sections"]] == list(spec.report)
        assert f"## Study `{study['name']}`" in text
        own = (out / study["name"] / "report.md").read_text()
        for section in study["sections"]:
            assert f"### {section['title']}" in own
            assert section["checks"], section["analysis"]
            assert {c["verdict"] for c in section["checks"]} <= verdicts
            for figure in section["figures"]:
                png = out / study["name"] / figure
                assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
                linked = (f"]({study['name']}/{figure})", f'src="{study["name"]}/{figure}"')
                assert any(link in text for link in linked), figure
                assert f"]({figure})" in own or f'src="{figure}"' in own, figure
        assert study["wall_s"] > 0 and study["trials"] == {"FINISHED": len(study["run_ids"])}


def test_report_numbers_are_the_ones_in_mlflow(report, tracking_uri):
    """Recomputed with the MLflow client alone: the run ids, and a check's means."""
    _, data = report
    client = MlflowClient(tracking_uri)
    studies = {s["name"]: s for s in data["studies"]}
    for name, study in studies.items():
        exp = client.get_experiment_by_name(name)
        runs = client.search_runs(
            [exp.experiment_id], "tags.`transinv.role` = 'trial' and attributes.status = 'FINISHED'"
        )
        assert sorted(study["run_ids"]) == sorted(r.info.run_id for r in runs)

    def mean(study: str, metric: str, **params: str) -> float:
        exp = client.get_experiment_by_name(study)
        runs = client.search_runs([exp.experiment_id], "tags.`transinv.role` = 'trial'")
        values = [
            r.data.metrics[metric]
            for r in runs
            if all(r.data.params[k] == v for k, v in params.items())
            and math.isfinite(r.data.metrics.get(metric, math.nan))
        ]
        return sum(values) / len(values)

    (transfer,) = studies["mini_claim2_transfer_from_glyphs"]["sections"]
    target = sorted(["mnist", "fashion_mnist"])[0]
    (check,) = [c for c in transfer["checks"] if c["label"] == f"glyphs -> {target}"]
    assert check["id"] == "transfer.learned" and check["source"] == "paper"
    study = "mini_claim2_transfer_from_glyphs"
    ratio = metrics.TRANSFER_RATIO
    expected = mean(study, ratio, **{"pretrain.dataset": "glyphs", "finetune.dataset": target})
    vanilla = mean(study, ratio, **{"pretrain.dataset": "none", "finetune.dataset": target})
    assert check["values"]["mean_a"] == pytest.approx(expected)
    assert check["values"]["mean_b"] == pytest.approx(vanilla)
    assert check["effect"] == pytest.approx(expected - vanilla)
    assert check["p_holm"] is None or check["p_holm"] >= check["p"]

    (forgetting,) = studies["mini_claim5_forgetting"]["sections"]
    (falls,) = [c for c in forgetting["checks"] if c["id"] == "forgetting.g_falls"][:1]
    exp = client.get_experiment_by_name("mini_claim5_forgetting")
    g = metrics.invariance_key("G", "fc1")
    changes = []
    for run in client.search_runs([exp.experiment_id], "tags.`transinv.role` = 'trial'"):
        params = run.data.params
        if params["finetune.freeze"] == "none" and falls["label"].endswith(params["finetune.lr"]):
            history = sorted(client.get_metric_history(run.info.run_id, g), key=lambda m: m.step)
            changes.append(history[-1].value - history[0].value)
    assert falls["values"]["mean"] == pytest.approx(sum(changes) / len(changes))
    assert len(falls["run_ids"]) == len(changes) and falls["n"] == [len(changes)]


def test_report_is_logged_to_each_parent_run(report, tracking_uri):
    _, data = report
    client = MlflowClient(tracking_uri)
    for study in data["studies"]:
        logged = {a.path for a in client.list_artifacts(study["parent_run_id"], "report")}
        assert {"report/report.md", "report/report.json"} <= logged
        figures = {f"report/{f}" for s in study["sections"] for f in s["figures"]}
        assert figures <= logged


def test_studies_share_pretrainings_through_the_cache(ran, tracking_uri):
    """The forgetting miniature varies only finetuning: every trial loads a pretraining that
    the transfer miniature, run before it, stored."""
    runs = load_runs("mini_claim5_forgetting", tracking_uri)
    client = MlflowClient(tracking_uri)
    tags = [client.get_run(r).data.tags.get("transinv.pretrain_cache") for r in runs["run_id"]]
    assert tags == ["hit"] * len(runs)
    curves = client.get_metric_history(runs["run_id"][0], metrics.PRETRAIN_ACC)
    assert len(curves) >= 2  # the replayed pretraining curve is in the trial's own run


def test_regime_search_repeats_each_suggestion_over_seeds(ran, tracking_uri):
    runs = load_runs("mini_regime_search", tracking_uri)
    keys = [k for k in load_space(SPACES / "regime_search.yaml").space]
    groups = runs.groupby([k for k in keys if runs[k].notna().all()], dropna=False)["seed"]
    assert sorted(sorted(g) for _, g in groups) == [[0, 1, 2], [0, 1, 2]]
    assert math.isfinite(runs[metrics.ACC_UNTRAINED].mean())


def test_report_writes_the_readme_results_section_between_its_markers(ran, tracking_uri, tmp_path):
    names, _ = ran
    readme = tmp_path / "README.md"
    readme.write_text("# p\n\nbefore\n<!-- results:begin -->\nSTALE\n<!-- results:end -->\nafter\n")
    out = tmp_path / "docs" / "results"
    args = ["report", *names[:2], "--out", str(out), "--no-log", "--readme", str(readme)]
    assert cli.main([*args, "--tracking-uri", tracking_uri]) == 0
    text = readme.read_text()
    assert text.startswith("# p\n\nbefore\n<!-- results:begin -->\n") and text.endswith(
        "<!-- results:end -->\nafter\n"
    )
    assert "STALE" not in text and all(f"`{n}`" in text for n in names[:2])
    images = [line.split('"')[1] for line in text.splitlines() if line.startswith("<img ")]
    assert images and all((tmp_path / image).is_file() for image in images)
    readme.write_text("no markers\n")
    assert cli.main([*args, "--tracking-uri", tracking_uri]) == 2
    # A named block is rewritten on its own; the paper claims' block beside it stays as it was.
    kept = "<!-- results:begin -->\nKEEP\n<!-- results:end -->\n"
    readme.write_text(f"{kept}<!-- beyond:begin -->\nSTALE\n<!-- beyond:end -->\n")
    named = [*args, "--readme-block", "beyond", "--tracking-uri", tracking_uri]
    assert cli.main(named) == 0
    text = readme.read_text()
    assert text.startswith(kept) and text.endswith("<!-- beyond:end -->\n")
    assert "STALE" not in text and "--readme-block beyond" in text
