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
