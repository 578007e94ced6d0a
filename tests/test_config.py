"""The trial config: flat dotted keys round-trip, and bad input names the key and the choices."""

import pytest

from transinv.config import (
    KEY_TYPES,
    ConfigError,
    TrialConfig,
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
