"""Every shipped study file validates and dry-runs (each of its grid trials builds a valid
config) on this CPU machine, the paper-scale GPU study included."""

from pathlib import Path

import pytest

from study import cli
from study.space import load_space
from study.tuner import expected_trials

SPACES = sorted((Path(__file__).resolve().parents[1] / "search_spaces").glob("*.yaml"))


def test_the_paper_studies_are_there():
    names = {p.stem for p in SPACES}
    assert {"smoke", "claim1_not_invariant", "paper_scale", "dose_response"} <= names


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.stem)
def test_study_file_validates_and_dry_runs(path, capsys):
    spec = load_space(path)
    assert spec.name == path.stem
    assert path.read_text().startswith("#"), "header comment: what it is and how to run it"
    assert cli.main(["run", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"{expected_trials(spec)} trials" in out


def test_paper_scale_asks_for_a_gpu_per_trial_at_224_px():
    spec = load_space(next(p for p in SPACES if p.stem == "paper_scale"))
    assert (
        spec.gpu == 1 and spec.fixed["canvas.size"] == 224 and spec.fixed["canvas.item_size"] == 50
    )


def _paper_checks(spec) -> list[str]:
    from transinv.analyses import CHECKS, PAPER

    return [c for c in spec.report_plan.expect if CHECKS[c].source == PAPER] if spec.report else []


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.stem)
def test_paper_checks_have_five_seeds_and_a_paper_settings_sibling(path):
    spec = load_space(path)
    if not _paper_checks(spec) or spec.gpu:
        return
    assert len(spec.space["seed"].values) >= 5, "every paper check needs n >= 5 per group"
    if path.stem.endswith("_paper"):
        assert spec.fixed["optim.lr"] == 0.0001 and spec.fixed["pretrain.stop"] == "goal"
        return
    sibling = load_space(path.with_name(f"{path.stem}_paper.yaml"))
    assert sibling.report_plan == spec.report_plan
    assert sibling.space == spec.space and sibling.fixed["optim.batch_size"] == 32
    assert (sibling.fixed["stop.goal"], sibling.fixed["stop.patience"]) == (0.75, 800)


def test_the_report_section_is_pre_registered_in_the_digest(tmp_path):
    path = next(p for p in SPACES if p.stem == "claim5_forgetting")
    text = path.read_text().replace("../", "")
    base = path.parent / "base"
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "small_budget.yaml").write_text((base / "small_budget.yaml").read_text())
    plain = tmp_path / "claim5_forgetting.yaml"
    plain.write_text(text)
    expect = (
        "report:\n  analyses: [forgetting]\n  expect:\n    forgetting.g_falls: {min_effect: 0.2}\n"
    )
    changed = tmp_path / "changed.yaml"
    changed.write_text(text.replace("report: [forgetting]\n", expect))
    a, b = load_space(plain), load_space(changed)
    assert a.digest != b.digest
    assert b.report_plan.expect["forgetting.g_falls"].min_effect == 0.2


def test_readme_study_files_table_gives_each_files_trial_count():
    """The README's `### Study files` table states how many trials each file runs."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = readme.split("### Study files", 1)[1].split("\n\n", 2)[1]
    stated = {}
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0].startswith("`") and cells[-1].isdigit():
            stated[cells[0].strip("`")] = int(cells[-1])
    files = {p.name: p for p in SPACES}
    assert len(stated) >= 10 and set(stated) <= set(files), set(stated) - set(files)
    for name, trials in stated.items():
        assert expected_trials(load_space(files[name])) == trials, name
