"""The search adapters on real Optuna and Ray objects, no cluster: the `search:` options reach
the sampler, constraints reach it through `Trial.set_constraint` (no deprecated
`constraints_func`), several objectives become Optuna directions, and ASHA gets the horizon of
the longest trial."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import optuna
import pytest
import yaml

from study.search import (
    ConstrainedOptunaSearch,
    build_sampler,
    build_scheduler,
    build_search,
    define_by_run,
    finetune_horizon,
    optuna_study,
)
from study.space import load_space
from transinv.config import ConfigError

UP, TRAINED, DOWN = "finetune/acc_untrained", "finetune/acc_trained", "forgetting/pretrain_acc_drop"
STUDY = {
    "study": "s",
    "objective": {"metric": UP, "mode": "max"},
    "constraints": [f"{TRAINED} >= 0.5"],
    "search": {"sampler": "tpe", "seed": 0},
    "samples": 8,
    "fixed": {"model.arch": "tiny_cnn", "canvas.size": 32, "canvas.item_size": 8},
    "space": {
        "finetune.freeze": {"choice": ["none", "all_but_head"]},
        "finetune.steps": {"int": [50, 300], "step": 50},
        "optim.lr": {"loguniform": [1.0e-4, 1.0e-2]},
    },
}
TWO = [{"metric": UP, "mode": "max"}, {"metric": DOWN, "mode": "min"}]
POINT = {"finetune.freeze": "all_but_head", "finetune.steps": 300, "optim.lr": 1.0e-3}


def spec_of(tmp_path: Path, **top):
    study = copy.deepcopy(STUDY)
    for key, value in top.items():
        if value is None:
            study.pop(key, None)
        else:
            study[key] = value
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return load_space(path)


def test_search_options_reach_the_sampler_without_deprecation_warnings(tmp_path):
    tpe = dict(sampler="tpe", seed=3, startup=4, multivariate=False, constant_liar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # FutureWarning of constraints_func included
        sampler = build_sampler(spec_of(tmp_path, search=tpe))
        gp = build_sampler(spec_of(tmp_path, search={"sampler": "gp", "startup": 5}))
        nsga2 = build_sampler(spec_of(tmp_path, search={"sampler": "nsga2", "startup": 6}))
    assert type(sampler) is optuna.samplers.TPESampler
    # Optuna keeps these private; reading them is the only way to see the options arrived.
    assert (sampler._n_startup_trials, sampler._multivariate, sampler._constant_liar) == (
        4, False, False,
    )  # fmt: skip
    assert gp._n_startup_trials == 5
    assert type(nsga2) is optuna.samplers.NSGAIISampler and nsga2._population_size == 6
    default = build_sampler(spec_of(tmp_path))
    assert (default._multivariate, default._constant_liar, default._n_startup_trials) == (
        True, True, 10,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        ({"search": {"sampler": "random", "startup": 3}}, ["search.startup", "random"]),
        ({"search": {"sampler": "gp", "multivariate": True}}, ["search.multivariate", "tpe only"]),
        ({"search": {"sampler": "nsga2", "startup": 1}}, ["search.startup", ">= 2"]),
        ({"search": {"sampler": "tpe", "constant_liar": "yes"}}, ["search.constant_liar"]),
        ({"objectives": TWO}, ["both objective and objectives"]),
        ({"objective": None}, ["missing 'objective'", "objectives"]),
        ({"objective": None, "objectives": TWO[:1]}, ["objectives", "two or more"]),
        ({"objective": None, "objectives": [TWO[0], TWO[0]]}, ["objectives", "listed twice"]),
        (
            {"objective": None, "objectives": [TWO[0], {"metric": DOWN, "mode": "down"}]},
            ["objectives[1].mode", "max, min"],
        ),
        ({"search": {"sampler": "grid", "enqueue": [POINT]}}, ["search.enqueue", "grid"]),
        (
            {"search": {"enqueue": [{**POINT, "finetune.steps": 75}]}},
            ["enqueue[0].finetune.steps", "steps of 50"],
        ),
        (
            {"search": {"enqueue": [{**POINT, "finetune.freeze": "fc"}]}},
            ["enqueue[0].finetune.freeze", "choose one of none, all_but_head"],
        ),
        (
            {"search": {"enqueue": [{**POINT, "optim.lr": 1.0}]}},
            ["enqueue[0].optim.lr", "outside the space"],
        ),
        (
            {"search": {"enqueue": [{"finetune.freeze": "none"}]}},
            ["search.enqueue[0]", "missing 'finetune.steps'"],
        ),
        (
            {"search": {"enqueue": [{**POINT, "model.arch": "resnet18"}]}},
            ["enqueue[0].model.arch", "unknown key"],
        ),
        ({"search": {"enqueue": [POINT] * 9}}, ["search.enqueue", "9 points for 8 suggestions"]),
    ],
)
def test_bad_search_and_objectives_are_refused_by_name(tmp_path, edit, expected):
    with pytest.raises(ConfigError) as info:
        spec_of(tmp_path, **edit)
    for part in expected:
        assert part in str(info.value), f"{part!r} not in {info.value}"


def test_objectives_load_in_order_and_the_first_is_the_objective(tmp_path):
    spec = spec_of(tmp_path, objective=None, objectives=TWO)
    assert spec.objectives == ((UP, "max"), (DOWN, "min")) and spec.multi_objective
    assert (spec.objective, spec.mode) == (UP, "max")
    single = spec_of(tmp_path)
    assert single.objectives == ((UP, "max"),) and not single.multi_objective


def tell(search, trial_id: str, result: dict) -> optuna.trial.FrozenTrial:
    search.suggest(trial_id)
    search.on_trial_complete(trial_id, result)
    return optuna_study(search).trials[-1]


@pytest.mark.parametrize("sampler", ["tpe", "gp", "nsga2"])
def test_constraints_reach_every_constrained_sampler_through_set_constraint(tmp_path, sampler):
    spec = spec_of(tmp_path, search={"sampler": sampler, "seed": 0})
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        search = build_search(spec)
        infeasible = tell(search, "a", {UP: 0.9, TRAINED: 0.2})
        feasible = tell(search, "b", {UP: 0.6, TRAINED: 0.7})
    assert infeasible.constraints == {f"{TRAINED} >= 0.5": pytest.approx(0.3)}
    assert feasible.constraints == {f"{TRAINED} >= 0.5": 0.0}
    assert optuna_study(search).best_trial.number == feasible.number  # not the 0.9 one


def test_several_objectives_become_directions_and_a_missing_one_fails_the_trial(tmp_path):
    spec = spec_of(tmp_path, objective=None, objectives=TWO, search={"sampler": "nsga2"})
    search = build_search(spec)
    assert isinstance(search, ConstrainedOptunaSearch)
    study = optuna_study(search)
    assert study.directions == [
        optuna.study.StudyDirection.MAXIMIZE,
        optuna.study.StudyDirection.MINIMIZE,
    ]
    a = tell(search, "a", {UP: 0.8, DOWN: 0.3, TRAINED: 0.9})
    b = tell(search, "b", {UP: 0.6, DOWN: 0.1, TRAINED: 0.9})
    tell(search, "c", {UP: 0.5, DOWN: 0.4, TRAINED: 0.9})  # dominated by a
    missing = tell(search, "d", {UP: 0.9, TRAINED: 0.9})  # no forgetting measured
    nan = tell(search, "e", {UP: float("nan"), DOWN: 0.0, TRAINED: 0.9})
    assert a.values == [0.8, 0.3] and missing.state == nan.state == optuna.trial.TrialState.FAIL
    assert {t.number for t in study.best_trials} == {a.number, b.number}


def test_seed_repeater_tells_the_mean_of_every_objective(tmp_path):
    spec = spec_of(tmp_path, objective=None, objectives=TWO, repeat=2, search={"sampler": "random"})
    search = build_search(spec)
    search.set_search_properties(None, None, {})
    ids = ["t0", "t1"]
    for trial_id in ids:
        assert search.suggest(trial_id) is not None
    search.on_trial_complete("t0", {UP: 0.8, DOWN: 0.2, TRAINED: 0.9})
    search.on_trial_complete("t1", {UP: 0.6, DOWN: 0.4, TRAINED: 0.9})
    (trial,) = optuna_study(search).trials
    assert trial.values == pytest.approx([0.7, 0.3])


def test_enqueued_points_are_suggested_first_then_the_sampler_takes_over(tmp_path):
    """A user who knows a good regime (a grid's winner) starts the search from it: the points
    come first, in order, typed as the trainable receives them, and count as trials Optuna
    learns from."""
    second = {"finetune.freeze": "none", "finetune.steps": 50, "optim.lr": 1.0e-4}
    spec = spec_of(tmp_path, search={"sampler": "tpe", "seed": 0, "enqueue": [POINT, second]})
    assert spec.enqueue == (POINT, second)
    search = build_search(spec)
    search.set_search_properties(None, None, {})
    assert [search.suggest(t) for t in ("a", "b")] == [POINT, second]
    search.on_trial_complete("a", {UP: 0.8, TRAINED: 0.9})
    third = search.suggest("c")
    assert third not in (POINT, second) and set(third) == set(POINT)
    assert optuna_study(search).trials[0].params == POINT
    assert spec.digest != spec_of(tmp_path).digest


def test_an_enqueued_point_gives_exactly_the_keys_its_conditions_sample(tmp_path):
    space = {
        "pretrain.dataset": {"choice": ["none", "glyphs"]},
        "pretrain.steps": {
            "int": [250, 1000],
            "step": 250,
            "when_not": {"pretrain.dataset": "none"},
        },
    }
    vanilla, glyphs = (
        {"pretrain.dataset": "none"},
        {"pretrain.dataset": "glyphs", "pretrain.steps": 500},
    )
    spec = spec_of(tmp_path, space=space, search={"enqueue": [vanilla, glyphs]})
    assert spec.enqueue == (vanilla, glyphs)
    with pytest.raises(
        ConfigError, match=r"not sampled at this point .*: search.enqueue\[0\].pretrain.steps"
    ):
        spec_of(tmp_path, space=space, search={"enqueue": [{**vanilla, "pretrain.steps": 500}]})
    with pytest.raises(ConfigError, match=r"missing 'pretrain.steps' .*: search.enqueue\[0\]; "):
        spec_of(tmp_path, space=space, search={"enqueue": [{"pretrain.dataset": "glyphs"}]})


def test_asha_horizon_is_the_longest_trial(tmp_path):
    asha = {"grace_period": 10}
    spec = spec_of(tmp_path, scheduler="asha", asha=asha)
    assert finetune_horizon(spec) == 300 and build_scheduler(spec)._max_t == 300
    study = copy.deepcopy(STUDY)
    study["space"]["finetune.steps"] = {"choice": [100, 400, 200]}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({**study, "scheduler": "asha", "asha": asha}))
    assert finetune_horizon(load_space(path)) == 400
    del study["space"]["finetune.steps"]
    study["fixed"]["finetune.steps"] = 120
    path.write_text(yaml.safe_dump({**study, "scheduler": "asha", "asha": asha}))
    assert build_scheduler(load_space(path))._max_t == 120
    explicit = spec_of(tmp_path, scheduler="asha", asha={**asha, "max_t": 50})
    assert build_scheduler(explicit)._max_t == 50


def test_define_by_run_works_with_nsga2(tmp_path):
    spec = spec_of(tmp_path, objective=None, objectives=TWO, search={"sampler": "nsga2"})
    study = optuna.create_study(sampler=build_sampler(spec), directions=["maximize", "minimize"])
    for i in range(6):
        trial = study.ask()
        define_by_run(spec)(trial)
        study.tell(trial, [i / 10, i / 10])  # more transfer, more forgetting
    assert len(study.best_trials) == 6  # each trades one objective for the other
