"""Pareto fronts and parameter importance: known answers on synthetic run tables, then the
`best --pareto` and `importance` commands on a real multi-objective study (Ray, MLflow, NSGA-II)
whose exported Optuna storage gives the front back."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from transinv.config import ConfigError
from transinv.results import importance, pareto, pareto_mask, study_objectives

pytestmark = pytest.mark.slow(minutes=1)

UP, DOWN = "finetune/acc_untrained", "forgetting/pretrain_acc_drop"


def runs(rows: list[tuple], seeds: int = 2, spread: float = 0.0) -> pd.DataFrame:
    """One run per (condition, seed): rows are (dataset, lr, up, down) condition means; seeds
    sit at mean +- spread, so the means are exact."""
    out = []
    for dataset, lr, up, down in rows:
        for s in range(seeds):
            sign = 1 if s % 2 else -1
            out.append(
                {"pretrain.dataset": dataset, "finetune.lr": lr, "seed": s, "status": "FINISHED",
                 UP: up + sign * spread, DOWN: down, "finetune/acc_trained": up + 0.1}
            )  # fmt: skip
    return pd.DataFrame(out)


def test_pareto_mask_known_answers():
    scores = np.array([[1, 1], [2, 0], [0, 2], [1, 0], [1, 1], [0.5, 0.5]])
    # [1,0] is beaten by [1,1] and [2,0]; [0.5,0.5] by [1,1]; the tied [1,1] rows both stay.
    assert pareto_mask(scores).tolist() == [True, True, True, False, True, False]
    assert pareto_mask(np.zeros((0, 2))).tolist() == []


def test_pareto_drops_dominated_conditions_with_min_and_max_mixed():
    frame = runs(
        [
            ("glyphs", 0.001, 0.8, 0.3),  # front: best transfer
            ("mnist", 0.001, 0.6, 0.1),  # front: least forgetting
            ("omniglot", 0.001, 0.6, 0.2),  # dominated by mnist (same up, more forgetting)
            ("fashion_mnist", 0.001, 0.5, 0.35),  # dominated by both
            ("glyphs", 0.0001, 0.8, 0.3),  # ties the first: kept too
        ],
        spread=0.05,
    )
    front = pareto(frame, [(UP, "max"), (DOWN, "min")])
    assert list(front.columns[:2]) == ["pretrain.dataset", "finetune.lr"]
    got = {(r["pretrain.dataset"], r["finetune.lr"]) for _, r in front.iterrows()}
    assert got == {("glyphs", 0.001), ("glyphs", 0.0001), ("mnist", 0.001)}
    assert front[f"{UP} mean"].tolist() == pytest.approx([0.8, 0.8, 0.6])  # best first
    assert front[f"{UP} std"].iloc[0] == pytest.approx(0.05 * np.sqrt(2))
    assert set(front["n"]) == {2}
    # Flip the second objective's mode: forgetting becomes good, and the front changes.
    flipped = pareto(frame, [{"metric": UP, "mode": "max"}, {"metric": DOWN, "mode": "max"}])
    assert set(flipped["pretrain.dataset"]) == {"glyphs", "fashion_mnist"}
    everything = pareto(frame, [(UP, "max"), (DOWN, "min")], dominated=True)
    assert len(everything) == 5 and everything["pareto"].sum() == 3


def test_pareto_applies_constraints_to_condition_means_and_by():
    frame = runs([("glyphs", 0.001, 0.8, 0.3), ("mnist", 0.001, 0.6, 0.1)])
    front = pareto(frame, [(UP, "max"), (DOWN, "min")], where=[("finetune/acc_trained", ">=", 0.8)])
    assert front["pretrain.dataset"].tolist() == ["glyphs"]
    assert "finetune/acc_trained mean" in front
    by_lr = pareto(frame, [(UP, "max"), (DOWN, "min")], by=["finetune.lr"])
    assert len(by_lr) == 1 and by_lr["n"].iloc[0] == 4
    with pytest.raises(ConfigError, match="max or min"):
        pareto(frame, [(UP, "up")])


def test_study_objectives_read_from_the_parent_run_params():
    several = pd.Series({"objectives": '[["a/b", "max"], ["c/d", "min"]]'}, name="s")
    assert study_objectives(several) == [("a/b", "max"), ("c/d", "min")]
    assert study_objectives(pd.Series({"objective": "min a/b"}, name="s")) == [("a/b", "min")]


def test_importance_ranks_a_planted_key_above_seed_and_a_null_key():
    rng = np.random.default_rng(0)
    rows = []
    for lr in (1e-4, 1e-3, 1e-2):
        for dataset in ("glyphs", "mnist"):
            for seed in range(4):
                value = {1e-4: 0.2, 1e-3: 0.8, 1e-2: 0.5}[lr] + rng.normal(0, 0.02)
                rows.append({"finetune.lr": lr, "pretrain.dataset": dataset, "seed": seed,
                             "status": "FINISHED", UP: value})  # fmt: skip
    table = importance(pd.DataFrame(rows), UP).set_index("param")
    assert set(table.index) == {"finetune.lr", "pretrain.dataset", "seed"}
    for evaluator in ("ped_anova", "fanova"):
        assert table[evaluator].sum() == pytest.approx(1.0)
        assert table.loc["finetune.lr", evaluator] > 0.6
        assert table.loc["seed", evaluator] < 0.2
    assert table.index[0] == "finetune.lr" and table.attrs["trials"] == 24
    # seed joins even when not asked for; too few trials is a clear error.
    assert "seed" in set(importance(pd.DataFrame(rows), UP, params=["finetune.lr"])["param"])
    with pytest.raises(ConfigError, match="2 or more"):
        importance(pd.DataFrame(rows[:1]), UP)


def test_importance_and_pareto_figures_draw_what_the_tables_hold(tmp_path):
    from transinv.study_plots import importance_bars, pareto_scatter

    table = pd.DataFrame(
        {"param": ["finetune.lr", "seed", "pretrain.dataset"], "ped_anova": [0.9, 0.06, 0.04],
         "fanova": [0.8, 0.15, 0.05]}
    )  # fmt: skip
    fig = importance_bars(table)
    axes = fig.get_axes()
    assert [ax.get_title() for ax in axes] == ["PED-ANOVA", "fANOVA"]
    widths = [bar.get_width() for bar in axes[1].patches]
    assert widths == [0.05, 0.15, 0.8]  # first key on top
    assert axes[1].lines[0].get_xdata()[0] == 0.15  # the seed line
    fig.savefig(tmp_path / "importance.png")

    frame = runs([("glyphs", 0.001, 0.8, 0.3), ("mnist", 0.001, 0.6, 0.1),
                  ("omniglot", 0.001, 0.5, 0.35)])  # fmt: skip
    conditions = pareto(frame, [(UP, "max"), (DOWN, "min")], dominated=True)
    fig = pareto_scatter(conditions, UP, DOWN, label="pretrain.dataset")
    ax = fig.get_axes()[0]
    assert "front (2)" in [t.get_text() for t in ax.get_legend().get_texts()]
    assert {t.get_text() for t in ax.texts} == {"glyphs", "mnist"}
    assert "(min; mean ± std)" in ax.get_ylabel()
    fig.savefig(tmp_path / "pareto.png")


OBJECTIVES = f"objectives: [{{metric: {UP}, mode: max}}, {{metric: {DOWN}, mode: min}}]"


@pytest.fixture(scope="module")
def tradeoff_study(tmp_path_factory, tracking_uri):
    """A 4-trial two-objective NSGA-II study with a constraint, run once through the CLI."""
    from test_study import SPACE, driver, finish

    tmp = tmp_path_factory.mktemp("tradeoff")
    text = SPACE.format(
        name="tradeoff", sampler="nsga2, startup: 2", samples=4, pretrain_steps=20,
        finetune_steps=20,
        space="  pretrain.translation: {choice: [0.0, 1.0]}\n"
              "  finetune.freeze: {choice: [none, all_but_head]}",
    )  # fmt: skip
    text = text.replace("objective: {metric: finetune/acc_untrained, mode: max}", OBJECTIVES)
    text = text.replace("fixed:\n", "constraints: ['finetune/acc_trained >= 0.0']\nfixed:\n")
    text = text.replace("  model.arch:", "  pretrain.dataset: glyphs\n  model.arch:")
    space = tmp / "tradeoff.yaml"
    space.write_text(text)
    code, out = finish(driver(space, tracking_uri, tmp / "home"))
    assert code == 0, out
    assert "4 of 4 trials finished" in out and "--pareto" in out
    return tmp / "home"


def test_best_pareto_and_importance_answer_through_the_cli(tradeoff_study, tracking_uri, capsys):
    from study import cli

    base = ["--tracking-uri", tracking_uri]
    assert cli.main(["best", "tradeoff", "--pareto", *base]) == 0
    out = capsys.readouterr().out
    assert "Pareto front of tradeoff" in out and "±" in out
    assert f"{UP} (max)" in out and f"{DOWN} (min)" in out
    assert cli.main(["importance", "tradeoff", *base]) == 0
    out = capsys.readouterr().out
    assert f"importance for max {UP} over 4 trials" in out and f"min {DOWN}" in out
    assert "seed" in out and "ped_anova" in out and "fanova" in out
    assert cli.main(["best", "tradeoff", *base]) == 2  # no --metric and no --pareto
    assert "--metric" in capsys.readouterr().err


def test_parent_run_keeps_the_front_and_export_keeps_both_directions(
    tradeoff_study, tracking_uri, tmp_path, monkeypatch
):
    import json

    import optuna
    from mlflow import MlflowClient

    from study import cli
    from study.tuner import PARETO_ARTIFACT
    from transinv.results import load_runs, study_info

    info = study_info("tradeoff", tracking_uri)
    assert study_objectives(info) == [(UP, "max"), (DOWN, "min")]
    path = MlflowClient(tracking_uri).download_artifacts(info["run_id"], PARETO_ARTIFACT, tmp_path)
    table = json.loads(open(path).read())
    front = pareto(load_runs("tradeoff", tracking_uri), [(UP, "max"), (DOWN, "min")])
    assert f"{UP} mean" in table["columns"] and len(table["data"]) == len(front) >= 1

    monkeypatch.setenv("TRANSINV_HOME", str(tradeoff_study))
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    assert cli.main(["export-optuna", "tradeoff", "--storage-url", url]) == 0
    exported = optuna.load_study(study_name="tradeoff", storage=url)
    assert exported.directions == [
        optuna.study.StudyDirection.MAXIMIZE,
        optuna.study.StudyDirection.MINIMIZE,
    ]
    assert len(exported.trials) == 4
    assert all(t.constraints == {"finetune/acc_trained >= 0": 0.0} for t in exported.trials)
    values = [tuple(t.values) for t in exported.trials]
    best = {tuple(t.values) for t in exported.best_trials}
    assert best and best == {v for v, keep in zip(values, pareto_mask(
        np.array(values) * [1, -1]), strict=True) if keep}  # fmt: skip
