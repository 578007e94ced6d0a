"""The trial config: flat dotted keys round-trip, and bad input names the key and the choices."""

import re
from pathlib import Path

import pytest

from transinv.config import (
    KEY_TYPES,
    KEYS,
    ConfigError,
    TrialConfig,
    choices_for,
    describe,
    format_value,
    from_flat,
    parse_overrides,
    to_flat,
)

REQUIRED_KEYS = [
    "seed",
    "canvas.size",
    "canvas.item_size",
    "model.arch",
    "pretrain.dataset",
    "pretrain.regime",
    "pretrain.translation",
    "pretrain.steps",
    "finetune.dataset",
    "finetune.location",
    "finetune.steps",
    "finetune.freeze",
    "optim.lr",
    "eval.grid_step",
]


def test_the_issue_keys_exist_spelled_so():
    assert set(REQUIRED_KEYS) <= set(KEY_TYPES)


def test_flat_form_round_trips_through_strings():
    config = from_flat({"model.arch": "small_cnn_gap", "finetune.location": [0.5, 0.75]})
    flat = to_flat(config)
    assert flat["finetune.location"] == (0.5, 0.75)
    again = from_flat({k: format_value(v) for k, v in flat.items()})
    assert again == config


def test_cli_strings_are_typed():
    config = from_flat(
        parse_overrides(
            ["seed=3", "optim.lr=1e-4", "canvas.normalize=false", "finetune.location=0.5,0.5"]
        )
    )
    assert config.seed == 3 and config.optim.lr == 1e-4
    assert config.canvas.normalize is False and config.finetune.location == (0.5, 0.5)


def test_unknown_key_names_it_and_lists_valid_keys():
    with pytest.raises(ConfigError, match=r"unknown key 'model.arc' in x.yaml; valid keys: seed"):
        from_flat({"model.arc": "vgg16"}, source="x.yaml")


def test_unknown_architecture_lists_the_registry():
    with pytest.raises(ConfigError) as err:
        from_flat({"model.arch": "vgg17"}, source="search_spaces/x.yaml")
    message = str(err.value)
    assert "unknown architecture 'vgg17' in search_spaces/x.yaml: model.arch" in message
    assert "small_cnn" in message and "vgg16_bn" in message and "densenet121" in message


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("pretrain.dataset", "kmnist", "choose one of none, imagenet, glyphs"),
        ("finetune.dataset", "imagenet", "choose one of glyphs"),
        ("pretrain.regime", "diagonal", "whole"),
        ("finetune.freeze", "everything", "all_but_head"),
        ("canvas.size", "big", "expected an integer"),
        ("seed", 1.5, "expected an integer"),
        ("optim.lr", "nan", "expected a finite number"),
        ("pretrain.translation", 1.5, "must be in [0, 1]"),
        ("finetune.location", "0.5", "expected a point"),
        ("canvas.channels", 2, "must be 1 or 3"),
    ],
)
def test_bad_values_name_the_key(key, value, fragment):
    with pytest.raises(ConfigError) as err:
        from_flat({key: value})
    assert key in str(err.value) and fragment in str(err.value)


def test_imagenet_needs_rgb_and_finetune_set_must_differ():
    with pytest.raises(ConfigError, match="canvas.channels=3"):
        from_flat({"pretrain.dataset": "imagenet"})
    with pytest.raises(ConfigError, match="must differ"):
        from_flat({"pretrain.dataset": "glyphs_b"})


def test_override_without_equals_is_refused():
    with pytest.raises(ConfigError, match="not key=value"):
        parse_overrides(["model.arch"])


def test_defaults_are_the_small_preset():
    c = TrialConfig()
    assert (c.canvas.size, c.canvas.item_size, c.model.arch) == (64, 16, "small_cnn")
    assert (c.pretrain.steps, c.finetune.steps, c.optim.batch_size) == (3000, 1000, 64)
    assert c.finetune.location == (0.25, 0.5) and c.pretrain.regime == "whole"


def test_validation_checks_bounds_then_rules_across_keys_then_registry_names():
    with pytest.raises(ConfigError, match="canvas.size"):
        from_flat({"canvas.size": 10, "model.arch": "vgg17", "finetune.dataset": "glyphs"})
    with pytest.raises(ConfigError, match="must differ"):
        from_flat({"model.arch": "vgg17", "finetune.dataset": "glyphs"})
    with pytest.raises(ConfigError, match="unknown regime 'diagonal'.*pretrain.class_regimes"):
        from_flat({"pretrain.class_regimes": "0=diagonal"})
    with pytest.raises(ConfigError, match="bad pair '0:left'"):
        from_flat({"pretrain.class_regimes": "0:left", "model.arch": "vgg17"})


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("optim.lr", 0.0, "must be > 0"),
        ("stop.goal", 0.0, "must be in (0, 1]"),
        ("eval.grid_offset", 1.0, "must be in [0, 1)"),
        ("finetune.location", "0.5,1.5", "fractions must be in [0, 1]"),
        ("eval.points", 1, "must be >= 2"),
    ],
)
def test_each_declared_bound_is_enforced_with_its_interval(key, value, fragment):
    with pytest.raises(ConfigError) as err:
        from_flat({key: value}, source="x.yaml")
    assert f"'{key}' in x.yaml: {fragment}" in str(err.value)


def test_every_key_is_declared_once_with_a_doc_and_its_domain_is_what_validation_enforces():
    from transinv.choices import MODELS, REGIMES

    assert set(KEYS) == set(KEY_TYPES) and all(spec.doc for spec in KEYS.values())
    assert choices_for("model.arch") == tuple(MODELS)
    assert choices_for("pretrain.dataset")[:2] == ("none", "imagenet")
    assert choices_for("pretrain.regime") == tuple(REGIMES)
    assert choices_for("finetune.freeze") == ("none", "conv", "fc", "all_but_head")
    assert choices_for("optim.lr") is None and choices_for("canvas.channels") == (1, 3)
    rows = {row[0]: row for row in describe()}
    assert rows["canvas.size"][1:4] == ("int", "64", ">= 32")
    assert rows["pretrain.location"][3] == "each in [0, 1]"
    assert "vgg16_bn" in rows["model.arch"][3]


def _readme_row(key: str) -> list[str]:
    """The backticked names in the last cell of the README config-keys row that names `key`."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for line in readme.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and f"`{key}`" in cells[0].split(", "):
            return re.findall(r"`([^`]+)`", cells[2])
    raise AssertionError(f"README has no config-keys row for {key}")


@pytest.mark.parametrize(
    "key", ["model.arch", "pretrain.dataset", "pretrain.regime", "finetune.freeze"]
)
def test_readme_config_table_lists_exactly_the_declared_choices(key):
    assert _readme_row(key) == list(choices_for(key))


def test_keys_and_list_commands_print_every_key_and_every_registry_entry(capsys):
    from transinv.__main__ import main
    from transinv.choices import REGISTRIES

    assert main(["--keys"]) == 0
    out = capsys.readouterr().out
    assert all(f"\n{k} " in f"\n{out}" for k in KEY_TYPES)
    assert main(["--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for registry in REGISTRIES:
        for entry in registry.entries():
            line = next(
                ln for ln in lines if ln.split()[:2] == [*registry.kind.split(), entry.name]
            )
            assert all(f"{k}=" in line for k in entry.facts) and entry.doc in line
    assert any(ln.startswith("analysis") and "forgetting" in ln for ln in lines)
