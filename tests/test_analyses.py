"""The verdict rule on known estimates, the pre-registration schema (`report:` in a study file,
errors naming the file and the entry), Holm over a study's paper checks, and the helpers of the
analyses. The analyses themselves: tests/test_analyses_known_answers.py."""

import math

import pandas as pd
import pytest

from transinv import stats
from transinv.analyses import (
    CHECKS,
    CONTRADICTED,
    HELD,
    NO_DATA,
    NOT_SHOWN,
    PAPER,
    Check,
    plan_from_param,
    plan_from_yaml,
    representation_layer,
    with_holm,
)
from transinv.analyses.base import g_at_start_column, invariance_level, trial_key
from transinv.analyses.expectations import Expectation, verdict
from transinv.config import ConfigError

GREATER = Expectation("greater", 0.05)


@pytest.mark.parametrize(
    "a, b, expected, if_less",
    [
        ([0.40, 0.42, 0.38], [0.10, 0.11, 0.09], HELD, CONTRADICTED),
        # CI excludes 0 but the effect is below min_effect; the other way, a wrong-side effect
        ([0.14, 0.13, 0.15], [0.10, 0.11, 0.09], NOT_SHOWN, CONTRADICTED),
        ([0.60, 0.10, 0.35], [0.10, 0.11, 0.09], NOT_SHOWN, NOT_SHOWN),  # CI includes 0
        ([0.10, 0.11, 0.09], [0.40, 0.42, 0.38], CONTRADICTED, HELD),
        ([], [0.1], NO_DATA, NO_DATA),
        ([0.5], [0.1, 0.12], NOT_SHOWN, NOT_SHOWN),  # one replicate: no interval
    ],
)
def test_verdict_needs_the_ci_on_the_expected_side_and_the_minimal_effect(a, b, expected, if_less):
    estimate = stats.welch(a, b)
    assert verdict(GREATER, estimate, estimate.p) == expected
    assert verdict(Expectation("less", 0.05), estimate, estimate.p) == if_less


def test_within_is_an_equivalence_claim():
    margin = Expectation("within", 0.1)
    close = stats.welch([0.10, 0.11, 0.09, 0.10], [0.10, 0.10, 0.11, 0.09])
    far = stats.welch([0.50, 0.51, 0.49], [0.10, 0.11, 0.09])
    noisy = stats.welch([0.3, 0.0, 0.1], [0.0, 0.2, 0.1])
    for estimate, expected in ((close, HELD), (far, CONTRADICTED), (noisy, NOT_SHOWN)):
        p = stats.equivalence_p(estimate, 0.1)
        assert verdict(margin, estimate, p) == expected


def _check(p: float, effect: float = 0.3, source: str = PAPER) -> Check:
    return Check(
        id="transfer.learned",
        label="",
        source=source,
        expectation="",
        claim="",
        direction="greater",
        min_effect=0.1,
        measured="",
        verdict=HELD,
        effect=effect,
        ci_low=0.2,
        ci_high=0.4,
        p=p,
        n=(5, 5),
        method=stats.WELCH,
    )


def test_holm_adjusts_only_paper_checks_and_their_verdicts_use_it():
    checks = [_check(0.02), _check(0.04), _check(0.001, source="hypothesis")]
    adjusted = with_holm(checks)
    assert [c.p_holm for c in adjusted[:2]] == pytest.approx([0.04, 0.04])
    assert math.isnan(adjusted[2].p_holm) and adjusted[2].verdict == HELD
    assert [c.verdict for c in adjusted[:2]] == [HELD, HELD]
    three = with_holm([_check(0.02), _check(0.03), _check(0.04)])
    assert {c.verdict for c in three} == {NOT_SHOWN}  # 0.06 after Holm


def test_plan_resolves_defaults_and_file_overrides():
    plan = plan_from_yaml(["forgetting"], "x.yaml")
    assert set(plan.expect) == {c for c in CHECKS if c.startswith("forgetting.")}
    assert plan.expect["forgetting.g_falls"] == CHECKS["forgetting.g_falls"].default
    given = {
        "analyses": ["forgetting"],
        "expect": {"forgetting.g_falls": {"direction": "less", "min_effect": 0.2}},
    }
    plan = plan_from_yaml(given, "x.yaml")
    assert plan.expect["forgetting.g_falls"] == Expectation("less", 0.2)
    assert plan_from_param(plan.to_param()) == plan
    legacy = plan_from_param("forgetting,transfer")
    assert legacy.analyses == ("forgetting", "transfer") and legacy.expect == {}


@pytest.mark.parametrize(
    "value, words",
    [
        ({"analyses": ["nope"]}, ["x.yaml: report.analyses[0]", "'nope'", "forgetting"]),
        (
            {"analyses": ["transfer"], "expect": {"forgetting.g_falls": {}}},
            ["x.yaml: report.expect.forgetting.g_falls", "unknown check", "transfer.learned"],
        ),
        (
            {"analyses": ["transfer"], "expect": {"transfer.learned": {"direction": "up"}}},
            ["report.expect.transfer.learned.direction", "greater, less, within"],
        ),
        (
            {"analyses": ["transfer"], "expect": {"transfer.learned": {"min_effect": -1}}},
            ["report.expect.transfer.learned.min_effect", "-1"],
        ),
        ({"analyses": ["transfer"], "expects": {}}, ["report.expects", "analyses, expect"]),
        ("transfer", ["x.yaml: report", "a list of analyses"]),
    ],
)
def test_plan_errors_name_the_file_and_the_entry(value, words):
    with pytest.raises(ConfigError) as caught:
        plan_from_yaml(value, "x.yaml")
    for word in words:
        assert word in str(caught.value)


def test_every_paper_check_quotes_the_paper_and_sources_are_known():
    for check in CHECKS.values():
        assert check.source in ("paper", "hypothesis", "sanity")
        assert (check.source == PAPER) == bool(check.claim)


def test_invariance_level_names_the_level_its_interval_reaches():
    assert invariance_level(pd.Series([0.6, 0.62, 0.61, 0.63])).startswith("largely")
    assert invariance_level(pd.Series([0.3, 0.31, 0.29, 0.3])).startswith("partly")
    assert invariance_level(pd.Series([0.0, 0.01, 0.02, 0.0])).startswith("not invariant")
    assert invariance_level(pd.Series([0.0, 0.6, 0.1])).startswith("not determined")


def trial_row(**changes) -> pd.Series:
    """A run's config columns: a vanilla small CNN at seed 0, with `changes` (dots as `__`)."""
    row = {"seed": 0, "pretrain.dataset": "none", "pretrain.regime": "whole"}
    row.update({"model.arch": "small_cnn", "run.threads": 1})
    return pd.Series({**row, **{k.replace("__", "."): v for k, v in changes.items()}})


def test_trial_key_ignores_threads_and_a_vanilla_start_s_pretraining_keys():
    row = trial_row()
    assert trial_key(row) == trial_key(trial_row(pretrain__regime="class_region", run__threads=2))
    assert trial_key(row) != trial_key(trial_row(seed=1))
    pretrained = trial_row(pretrain__dataset="glyphs")
    changed = trial_row(pretrain__dataset="glyphs", pretrain__regime="class_region")
    assert trial_key(pretrained) != trial_key(changed)


def test_trial_key_names_translation_over_the_whole_canvas_whole():
    """dose_response's r = 1 and the claim studies' `whole` are one pretraining (the cache
    serves both), so their trials are the same trials; a smaller range is not."""
    whole = trial_row(pretrain__dataset="glyphs", pretrain__translation=0.5)
    translated = whole.copy()
    translated["pretrain.regime"], translated["pretrain.translation"] = "translation", 1.0
    assert trial_key(translated) == trial_key(whole)
    translated["pretrain.translation"] = 0.67
    assert trial_key(translated) != trial_key(whole)


def test_representation_layer_is_the_last_hidden_fc_else_logits():
    g = "invariance/G/"
    assert representation_layer([f"{g}conv4", f"{g}fc1", f"{g}logits"]) == "fc1"
    assert representation_layer([f"{g}fc1", f"{g}fc2", f"{g}logits"]) == "fc2"
    assert representation_layer([f"{g}conv5", f"{g}logits"]) == "logits"
    assert representation_layer(["finetune/acc_trained"]) is None
    assert g_at_start_column("fc1") == "invariance/G/fc1 at step 0"
    assert g_at_start_column(None) is None
