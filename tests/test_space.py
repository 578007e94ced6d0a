"""Study files: the smoke study loads, every bad file is refused with a message that names the file,
the YAML path and the choices, and the spec drives real Optuna studies and Ray grids."""

import copy
import math
import pickle
import warnings
from pathlib import Path

import optuna
import pytest
import yaml

from study.search import (
    DefineByRun,
    build_sampler,
    define_by_run,
    grid_param_space,
)
from study.space import (
    GRID_POINT,
    active_params,
    grid_points,
    load_space,
    sampled_values,
    trial_config,
)
from study.tuner import expected_trials
from transinv.config import ConfigError, TrialConfig
from transinv.constraints import Constraint
from transinv.pretrain_cache import pretrain_key

SPACES = Path(__file__).resolve().parents[1] / "search_spaces"
SMOKE = SPACES / "smoke.yaml"

BASE = {
    "study": "t",
    "objective": {"metric": "finetune/acc_untrained", "mode": "max"},
    "constraints": ["finetune/acc_trained >= 0.5"],
    "search": {"sampler": "tpe", "seed": 0},
    "samples": 4,
    "fixed": {"model.arch": "tiny_cnn", "canvas.size": 32, "canvas.item_size": 8},
    "space": {
        "pretrain.dataset": {"choice": ["none", "glyphs"]},
        "pretrain.translation": {"uniform": [0.0, 1.0], "when": {"pretrain.dataset": "glyphs"}},
        "optim.lr": {"loguniform": [1.0e-4, 1.0e-2]},
        "finetune.steps": {"int": [50, 200], "step": 50},
        "finetune.freeze": {"choice": ["none", "all_but_head"]},
    },
}


def write(tmp_path: Path, study: dict | str, name: str = "study.yaml") -> Path:
    path = tmp_path / name
    path.write_text(study if isinstance(study, str) else yaml.safe_dump(study, sort_keys=False))
    return path


def conditional_study(tmp_path: Path):
    """A TPE study with a conditional key: dataset, translation when glyphs, freeze."""
    study = copy.deepcopy(BASE)
    study["space"] = {
        k: v
        for k, v in BASE["space"].items()
        if k in ("pretrain.dataset", "pretrain.translation", "finetune.freeze")
    }
    return load_space(write(tmp_path, study))


def changed(**edits) -> dict:
    """BASE with edits: `a__b=v` sets study[a][b] = v; a value of DROP deletes the entry."""
    study = copy.deepcopy(BASE)
    for dotted, value in edits.items():
        *parents, last = dotted.split("__")
        node = study
        for p in parents:
            node = node.setdefault(p.replace("_DOT_", "."), {})
        last = last.replace("_DOT_", ".")
        if value is DROP:
            del node[last]
        else:
            node[last] = value
    return study


DROP = object()


def test_smoke_study_loads_as_documented():
    spec = load_space(SMOKE)
    assert spec.name == "smoke"
    assert (spec.objective, spec.mode) == ("finetune/acc_untrained", "max")
    assert [str(c) for c in spec.constraints] == ["finetune/acc_trained >= 0.5"]
    assert (spec.sampler, spec.seed, spec.samples, spec.max_concurrent) == ("grid", 0, 1, 2)
    assert (spec.cpu, spec.gpu, spec.scheduler) == (1.0, 0.0, "fifo")
    assert spec.fixed["model.arch"] == "tiny_cnn"
    assert spec.fixed["pretrain.regime"] == "whole"
    assert spec.fixed["finetune.freeze"] == "none"
    # Vanilla against pretrained, two seeds each: the comparison the run's summary prints.
    assert list(spec.space) == ["pretrain.dataset", "seed"]
    assert spec.space["pretrain.dataset"].values == ("none", "glyphs")
    assert spec.space["seed"].values == (0, 1)
    assert expected_trials(spec) == 4
    assert len(spec.digest) == 64
    assert SMOKE.read_text().startswith("#")
    assert "python -m study run search_spaces/smoke.yaml" in SMOKE.read_text()


def test_digest_ignores_comments_and_layout_but_not_values(tmp_path):
    text = SMOKE.read_text()
    same = "# another comment\n" + text.replace("samples: 1", "samples:    1   # one")
    other = text.replace("samples: 1", "samples: 2")
    digest = load_space(SMOKE).digest
    assert load_space(write(tmp_path, same, "a.yaml")).digest == digest
    assert load_space(write(tmp_path, other, "b.yaml")).digest != digest


def test_fixed_values_are_typed(tmp_path):
    spec = load_space(write(tmp_path, changed(fixed__finetune_DOT_location="0.5,0.25")))
    assert spec.fixed["finetune.location"] == (0.5, 0.25)
    assert spec.fixed["canvas.size"] == 32


CASES = {
    "not_yaml": ("study: [unclosed\n", ["line"]),
    "not_mapping": ("- a\n- b\n", ["study, objective"]),
    "unknown_top_key": (changed(sampler="tpe"), ["sampler", "study, objective"]),
    "missing_study": (changed(study=DROP), ["study", "objective"]),
    "missing_objective": (changed(objective=DROP), ["objective", "study"]),
    "bad_name": (changed(study="My Study"), ["study", "lower case"]),
    "bad_mode": (changed(objective__mode="maximize"), ["objective.mode", "max, min"]),
    "bad_metric": (changed(objective__metric="accuracy"), ["objective.metric", "group/quantity"]),
    "bad_constraint": (changed(constraints=["finetune/acc = 1"]), ["constraints[0]", ">=, <="]),
    "bad_sampler": (
        changed(search__sampler="cmaes"),
        ["search.sampler", "tpe, gp, nsga2, random, grid"],
    ),
    "bad_scheduler": (changed(scheduler="pbt"), ["scheduler", "fifo, asha"]),
    "asha_without_asha": (changed(asha={"grace_period": 10}), ["asha", "scheduler: asha"]),
    "zero_samples": (changed(samples=0), ["samples", ">= 1"]),
    "zero_concurrent": (changed(max_concurrent=0), ["max_concurrent", ">= 1"]),
    "unknown_fixed_key": (changed(fixed__model_DOT_archh="x"), ["fixed.model.archh", "model.arch"]),
    "unknown_space_key": (
        changed(space__optim_DOT_lrr={"uniform": [0.1, 0.2]}),
        ["space.optim.lrr", "optim.lr"],
    ),
    "fixed_and_space": (
        changed(fixed__finetune_DOT_freeze="none"),
        ["space.finetune.freeze", "both fixed and in space"],
    ),
    "fixed_wrong_type": (changed(fixed__canvas_DOT_size="big"), ["fixed.canvas.size", "integer"]),
    "space_wrong_type": (
        changed(space__finetune_DOT_steps={"choice": [100, "many"]}),
        ["space.finetune.steps", "integer"],
    ),
    "unknown_arch_in_space": (
        changed(
            space__model_DOT_arch={"choice": ["tiny_cnn", "vgg17"]}, fixed__model_DOT_arch=DROP
        ),
        ["unknown architecture 'vgg17'", "space.model.arch", "tiny_cnn"],
    ),
    "unknown_arch_fixed": (
        changed(fixed__model_DOT_arch="vgg17"),
        ["unknown architecture 'vgg17'", "fixed.model.arch", "tiny_cnn"],
    ),
    "unknown_dataset": (
        changed(space__pretrain_DOT_dataset={"choice": ["none", "glyfs"]}),
        ["'glyfs'", "space.pretrain.dataset", "glyphs"],
    ),
    "unknown_regime": (
        changed(fixed__pretrain_DOT_regime="everywhere"),
        ["'everywhere'", "fixed.pretrain.regime", "translation"],
    ),
    "unknown_freeze": (
        changed(space__finetune_DOT_freeze={"choice": ["none", "partial"]}),
        ["'partial'", "space.finetune.freeze", "all_but_head"],
    ),
    "unknown_device": (changed(fixed__run_DOT_device="tpu"), ["fixed.run.device", "auto, cpu"]),
    "empty_uniform": (
        changed(space__pretrain_DOT_translation={"uniform": [1.0, 0.0]}),
        ["space.pretrain.translation", "empty range"],
    ),
    "empty_choice": (
        changed(space__finetune_DOT_freeze={"choice": []}),
        ["space.finetune.freeze", "empty range"],
    ),
    "loguniform_at_zero": (
        changed(space__optim_DOT_lr={"loguniform": [0.0, 0.1]}),
        ["space.optim.lr", "empty range"],
    ),
    "int_step_zero": (
        changed(space__finetune_DOT_steps={"int": [50, 200], "step": 0}),
        ["space.finetune.steps", "empty range"],
    ),
    "int_single_value": (
        changed(space__finetune_DOT_steps={"int": [50, 50]}),
        ["space.finetune.steps", "empty range"],
    ),
    "uniform_on_int_key": (
        changed(space__finetune_DOT_steps={"uniform": [50, 200]}),
        ["space.finetune.steps", "use int"],
    ),
    "unknown_kind": (
        changed(space__optim_DOT_lr={"normal": [0.0, 1.0]}),
        ["space.optim.lr", "choice, uniform, loguniform, int, grid"],
    ),
    "when_unknown_key": (
        changed(space__optim_DOT_lr={"uniform": [0.1, 0.2], "when": {"seed": 0}}),
        ["space.optim.lr.when.seed", "pretrain.dataset"],
    ),
    "when_later_key": (
        changed(space__pretrain_DOT_translation={"uniform": [0, 1], "when": {"optim.lr": 0.1}}),
        ["space.pretrain.translation.when.optim.lr", "comes later"],
    ),
    "when_never_matches": (
        changed(
            space__pretrain_DOT_translation={"uniform": [0, 1], "when": {"pretrain.dataset": "x"}}
        ),
        ["space.pretrain.translation.when.pretrain.dataset", "none, glyphs"],
    ),
    "grid_with_tpe": (
        changed(space__seed={"grid": [0, 1, 2]}),
        ["space.seed", "grid domains need search.sampler: grid"],
    ),
    "uniform_with_grid": (
        changed(search__sampler="grid"),
        ["space.pretrain.translation", "grid or choice"],
    ),
    "out_of_range_end": (
        changed(space__pretrain_DOT_translation={"uniform": [0.0, 2.0]}),
        ["space.pretrain.translation", "must be in [0, 1]"],
    ),
    "unknown_analysis": (
        changed(report=["forgeting"]),
        ["report.analyses[0]", "unknown value 'forgeting'", "forgetting"],
    ),
    "repeat_with_grid": (
        {**changed(search__sampler="grid", repeat=3), "space": {"seed": {"grid": [0, 1]}}},
        ["repeat", "grid"],
    ),
    "repeat_not_dividing_samples": (changed(repeat=3), ["samples", "multiple of repeat 3"]),
    "seed_in_space_with_repeat": (
        changed(repeat=2, space__seed={"choice": [0, 1]}),
        ["space.seed", "repeat"],
    ),
    "missing_base": (changed(base="nowhere.yaml"), ["base", "'nowhere.yaml' not found"]),
    "cross_key_first_values": (
        changed(
            fixed__finetune_DOT_dataset="glyphs",
            space__pretrain_DOT_dataset={"choice": ["glyphs", "none"]},
        ),
        ["fixed", "finetune.dataset", "must differ from pretrain.dataset"],
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_study_file_names_file_path_and_choices(tmp_path, name):
    study, expected = CASES[name]
    path = write(tmp_path, study, f"bad_{name}.yaml")
    with pytest.raises(ConfigError) as info:
        load_space(path)
    message = str(info.value)
    assert path.name in message
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nowhere.yaml"):
        load_space(tmp_path / "nowhere.yaml")


def test_define_by_run_pickles_and_suggests_only_active_keys_inside_domains(tmp_path):
    spec = load_space(write(tmp_path, BASE))
    func = pickle.loads(pickle.dumps(define_by_run(spec)))
    assert isinstance(func, DefineByRun)
    study = optuna.create_study(sampler=build_sampler(spec), direction="maximize")
    seen = set()
    for i in range(20):
        trial = study.ask()
        assert func(trial) is None
        params = trial.params
        seen.add(params["pretrain.dataset"])
        assert ("pretrain.translation" in params) == (params["pretrain.dataset"] == "glyphs")
        assert 0.0 <= params.get("pretrain.translation", 0.0) <= 1.0
        assert 1e-4 <= params["optim.lr"] <= 1e-2
        assert params["finetune.steps"] in (50, 100, 150, 200)
        assert params["finetune.freeze"] in ("none", "all_but_head")
        assert active_params(spec, params) == params
        trial_config(spec, params)
        trial.set_constraint("c", 0.0 if i % 2 else 1.0)
        study.tell(trial, params["optim.lr"] * 100)
    assert seen == {"none", "glyphs"}


def test_ray_optuna_search_keeps_dotted_keys_flat(tmp_path):
    from ray.tune.search.optuna import OptunaSearch

    spec = conditional_study(tmp_path)
    searcher = OptunaSearch(
        space=define_by_run(spec),
        sampler=build_sampler(spec),
        metric=spec.objective,
        mode=spec.mode,
    )
    config = searcher.suggest("trial_1")
    assert set(config) <= set(spec.space)
    assert "pretrain.dataset" in config
    assert trial_config(spec, config).model.arch == "tiny_cnn"


def test_trial_config_merges_fixed_and_drops_inactive_keys(tmp_path):
    spec = conditional_study(tmp_path)
    default = TrialConfig().pretrain.translation
    off = {"pretrain.dataset": "none", "pretrain.translation": 0.3, "finetune.freeze": "none"}
    on = {**off, "pretrain.dataset": "glyphs"}
    assert active_params(spec, off) == {"pretrain.dataset": "none", "finetune.freeze": "none"}
    config = trial_config(spec, off)
    assert (config.pretrain.dataset, config.pretrain.translation) == ("none", default)
    assert config.model.arch == "tiny_cnn" and config.canvas.size == 32
    assert trial_config(spec, on).pretrain.translation == 0.3


def test_trial_config_refuses_keys_outside_the_space_and_unsampled_active_keys(tmp_path):
    spec = conditional_study(tmp_path)
    with pytest.raises(ConfigError, match="optim.lr"):
        trial_config(spec, {"pretrain.dataset": "none", "finetune.freeze": "none", "optim.lr": 1})
    with pytest.raises(ConfigError, match="finetune.freeze"):
        trial_config(spec, {"pretrain.dataset": "none"})


def test_when_not_and_chained_conditions(tmp_path):
    study = copy.deepcopy(BASE)
    study["space"] = {
        "pretrain.dataset": {"choice": ["none", "glyphs"]},
        "pretrain.regime": {
            "choice": ["whole", "translation"],
            "when_not": {"pretrain.dataset": "none"},
        },
        "pretrain.translation": {"uniform": [0.0, 1.0], "when": {"pretrain.regime": "translation"}},
        **{
            k: v
            for k, v in BASE["space"].items()
            if k not in ("pretrain.dataset", "pretrain.translation")
        },
    }
    spec = load_space(write(tmp_path, study))
    d = spec.space["pretrain.translation"]
    assert d.active({"pretrain.regime": "translation"})
    assert not d.active({"pretrain.regime": "whole"})
    sampled = {
        "pretrain.dataset": "none",
        "pretrain.regime": "translation",
        "pretrain.translation": 0.5,
        "optim.lr": 1e-3,
        "finetune.steps": 50,
        "finetune.freeze": "none",
    }
    # regime is inactive for dataset none, so translation (conditioned on it) is inactive too.
    assert set(active_params(spec, sampled)) == {
        "pretrain.dataset",
        "optim.lr",
        "finetune.steps",
        "finetune.freeze",
    }
    sampled["pretrain.dataset"] = "glyphs"
    assert "pretrain.translation" in active_params(spec, sampled)


def test_grid_param_space_covers_every_key_and_trial_config_drops_inactive(tmp_path):
    study = changed(search__sampler="grid", samples=2)
    study["space"] = {
        "pretrain.dataset": {"choice": ["none", "glyphs"]},
        "pretrain.translation": {"grid": [0.0, 1.0], "when": {"pretrain.dataset": "glyphs"}},
        "finetune.location": {"grid": [[0.25, 0.5], "0.75,0.5"]},
        "seed": {"grid": [0, 1, 2]},
    }
    spec = load_space(write(tmp_path, study))
    assert spec.samples == 2
    points = grid_param_space(spec)[GRID_POINT]["grid_search"]
    assert len(points) == 2 * 2 * 2 * 3 and all(list(p) == list(spec.space) for p in points)
    # Keys that shape pretraining vary fastest (in file order), finetuning keys slowest.
    assert [tuple(p.values()) for p in points[:3]] == [
        ("none", 0.0, "0.25,0.5", 0),
        ("glyphs", 0.0, "0.25,0.5", 0),
        ("none", 1.0, "0.25,0.5", 0),
    ]
    assert points[4]["seed"] == 1 and points[12]["finetune.location"] == "0.75,0.5"
    assert sampled_values({GRID_POINT: points[12], "x": 1}) == {**points[12], "x": 1}
    config = trial_config(
        spec,
        {
            "pretrain.dataset": "none",
            "pretrain.translation": 0.0,
            "finetune.location": "0.75,0.5",
            "seed": 2,
        },
    )
    assert config.pretrain.translation == TrialConfig().pretrain.translation
    assert (config.finetune.location, config.seed) == ((0.75, 0.5), 2)
    with pytest.raises(ConfigError, match="grid"):
        build_sampler(spec)
    with pytest.raises(ConfigError, match="grid"):
        define_by_run(spec)


def test_grid_points_are_rays_launch_order_and_start_with_distinct_pretrainings():
    """The dry run's numbering is Ray's: Ray's own variants of `grid_param_space` are
    `grid_points`, in order. And a forgetting grid (finetuning keys x seeds) launches one
    pretraining per seed before any finetuning variant, so no two slots pretrain one network."""
    from ray.tune.search.variant_generator import generate_variants

    spec = load_space(SPACES / "claim5_forgetting.yaml")
    variants = generate_variants(grid_param_space(spec))
    points = grid_points(spec)
    assert [sampled_values(v) for _, v in variants] == points and len(points) == 40
    seeds = len(spec.space["seed"].values)
    keys = [pretrain_key(trial_config(spec, p)) for p in points]
    assert len(set(keys[:seeds])) == seeds == len(set(keys))


def test_constraints_known_answers():
    at_least = Constraint("finetune/acc_trained", ">=", 0.5)
    assert at_least.holds({"finetune/acc_trained": 0.7})
    assert at_least.violation({"finetune/acc_trained": 0.7}) == 0.0
    assert not at_least.holds({"finetune/acc_trained": 0.4})
    assert at_least.violation({"finetune/acc_trained": 0.4}) == pytest.approx(0.1)
    assert at_least.holds({"finetune/acc_trained": 0.5})
    for missing in ({}, {"finetune/acc_trained": math.nan}):
        assert not at_least.holds(missing)
        assert at_least.violation(missing) == math.inf
    below = Constraint("finetune/loss", "<", 1.0)
    assert below.violation({"finetune/loss": 1.5}) == pytest.approx(0.5)
    assert not below.holds({"finetune/loss": 1.0})
    assert below.violation({"finetune/loss": 1.0}) > 0  # Optuna counts 0 as feasible


def test_constraints_parse_with_or_without_spaces(tmp_path):
    study = changed(constraints=["finetune/acc_trained>=0.9", "invariance/cosine/conv3 < 1e-1"])
    spec = load_space(write(tmp_path, study))
    assert spec.constraints == (
        Constraint("finetune/acc_trained", ">=", 0.9),
        Constraint("invariance/cosine/conv3", "<", 0.1),
    )


@pytest.mark.parametrize(
    ("sampler", "cls"),
    [
        ("tpe", optuna.samplers.TPESampler),
        ("gp", optuna.samplers.GPSampler),
        ("random", optuna.samplers.RandomSampler),
    ],
)
def test_build_sampler_is_the_named_class_seeded_and_quiet(tmp_path, sampler, cls):
    spec = load_space(write(tmp_path, changed(search__sampler=sampler, search__seed=7)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sampler_obj = build_sampler(spec)
    assert type(sampler_obj) is cls

    def first_params():
        study = optuna.create_study(sampler=build_sampler(spec), direction="maximize")
        trial = study.ask()
        define_by_run(spec)(trial)
        return trial.params

    assert first_params() == first_params()


def test_constrained_tpe_best_trial_is_the_best_feasible_one(tmp_path):
    spec = load_space(write(tmp_path, BASE))
    study = optuna.create_study(sampler=build_sampler(spec), direction="maximize")
    for value, violation in ((0.9, 0.3), (0.5, 0.0), (0.3, 0.0)):
        trial = study.ask()
        define_by_run(spec)(trial)
        trial.set_constraint("finetune/acc_trained >= 0.5", violation)
        study.tell(trial, value)
    assert study.best_trial.value == 0.5
    assert study.trials[0].constraints == {"finetune/acc_trained >= 0.5": 0.3}


def test_asha_settings_and_resources_are_read(tmp_path):
    study = changed(
        scheduler="asha",
        asha={"grace_period": 25},
        resources={"cpu": 0.5, "gpu": 0.25},
        space__eval_DOT_items={"int": [8, 64], "log": True},
    )
    spec = load_space(write(tmp_path, study))
    assert spec.asha == {"grace_period": 25, "reduction_factor": 2.0}
    assert (spec.cpu, spec.gpu) == (0.5, 0.25)
    assert spec.space["eval.items"].log


def test_base_file_supplies_fixed_keys_and_its_edits_change_the_digest(tmp_path):
    base = tmp_path / "budget.yaml"
    base.write_text("fixed: {pretrain.steps: 40, optim.batch_size: 8, model.arch: small_cnn}\n")
    study = changed(base="budget.yaml")
    spec = load_space(write(tmp_path, study))
    assert spec.fixed["pretrain.steps"] == 40 and spec.fixed["optim.batch_size"] == 8
    assert spec.fixed["model.arch"] == "tiny_cnn"  # the study's own fixed keys win
    base.write_text("fixed: {finetune.steps: 60, optim.batch_size: 8}\n")
    assert "finetune.steps" not in load_space(write(tmp_path, study)).fixed  # its space wins
    base.write_text("fixed: {pretrain.steps: 60, optim.batch_size: 8}\n")
    assert load_space(write(tmp_path, study)).digest != spec.digest
    base.write_text("fixed: {finetune.stepz: 60}\n")
    with pytest.raises(ConfigError, match="budget.yaml: fixed.finetune.stepz"):
        load_space(write(tmp_path, study))


def test_report_repeat_and_cache_settings_load(tmp_path):
    study = changed(report=["transfer", "representations"], repeat=2, pretrain_cache=False)
    spec = load_space(write(tmp_path, study))
    assert spec.report == ("transfer", "representations")
    assert (spec.repeat, spec.pretrain_cache) == (2, False)
    defaults = load_space(write(tmp_path, BASE))
    assert (defaults.report, defaults.repeat, defaults.pretrain_cache) == ((), 1, True)


def test_every_problem_in_a_study_file_is_reported_at_once(tmp_path):
    """A typo'd top-level key, an unknown architecture and an empty range: one error lists all
    three, each with the file and its entry, and the typo gets a did-you-mean."""
    study = changed(
        sampels=4,
        fixed__model_DOT_arch="vgg17",
        space__pretrain_DOT_translation={"uniform": [1.0, 0.0]},
    )
    path = write(tmp_path, study, "three.yaml")
    with pytest.raises(ConfigError) as info:
        load_space(path)
    lines = str(info.value).splitlines()
    assert lines[0] == f"3 problems in {path}:"
    assert len(lines) == 4 and all(str(path) in line for line in lines)
    assert "unknown key 'sampels' (did you mean 'samples'?)" in lines[1]
    assert "unknown architecture 'vgg17'" in lines[2] and "fixed.model.arch" in lines[2]
    assert "empty range [1.0, 0.0]" in lines[3] and "space.pretrain.translation" in lines[3]


def test_a_broken_entry_does_not_cascade_into_conditions_that_name_it(tmp_path):
    study = changed(space__pretrain_DOT_dataset={"choice": []})
    with pytest.raises(ConfigError) as info:
        load_space(write(tmp_path, study))
    message = str(info.value)
    assert "space.pretrain.dataset" in message and "empty range" in message
    assert "problems" not in message  # pretrain.translation's `when` on it is not a second one
