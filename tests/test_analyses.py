"""Verdicts of the report's checks on known numbers: the effect must beat both the margin and
two standard errors to be `held`; the right sign alone is `partly`."""

import math

import pandas as pd
import pytest

from transinv.analyses import (
    HELD,
    MEASURED,
    NO_DATA,
    NOT_HELD,
    PARTLY,
    compare,
    level,
    representation_layer,
    trend,
)
from transinv.analyses.base import g_at_start_column


def series(*values):
    return pd.Series(values, dtype="float64")


@pytest.mark.parametrize(
    "higher, lower, verdict",
    [
        (series(0.40, 0.42, 0.38), series(0.10, 0.11, 0.09), HELD),
        (series(0.14, 0.13, 0.15), series(0.10, 0.11, 0.09), PARTLY),  # below the margin
        (series(0.60, 0.10, 0.35), series(0.10, 0.11, 0.09), PARTLY),  # within 2 SE
        (series(0.10, 0.10, 0.10), series(0.20, 0.20, 0.20), NOT_HELD),
        (series(), series(0.1), NO_DATA),
    ],
)
def test_compare_needs_margin_and_two_standard_errors(higher, lower, verdict):
    check = compare(higher, lower, "x above y", "x vs y")
    assert check.verdict == verdict
    if verdict != NO_DATA:
        assert check.values["difference"] == pytest.approx(higher.mean() - lower.mean())
        assert "n=3" in check.measured


def test_level_above_and_below_a_bound():
    assert level(series(1.0, 1.0, 1.0), 0.9, "e", "w", above=True).verdict == HELD
    assert level(series(0.95, 0.5, 1.0), 0.9, "e", "w", above=True).verdict == NOT_HELD
    assert level(series(0.02, 0.03, 0.01), 0.1, "e", "w", above=False).verdict == HELD
    assert level(series(0.09, 0.2, 0.0), 0.1, "e", "w", above=False).verdict == PARTLY
    assert level(series(0.01, 0.02), 0.0, "e", "w", above=True, margin=0.05).verdict == PARTLY
    assert level(series(math.nan), 0.0, "e", "w", above=True).verdict == NO_DATA


def test_trend_is_a_measured_rank_correlation():
    frame = pd.DataFrame({"r": [0, 0, 0.5, 0.5, 1, 1], "acc": [0.1, 0.12, 0.2, 0.22, 0.4, 0.38]})
    check = trend(frame, "r", "acc", "grows", "acc vs r")
    assert check.verdict == MEASURED and check.values["rho"] == pytest.approx(1.0, abs=0.1)
    assert trend(frame.head(2), "r", "acc", "grows", "acc vs r").verdict == NO_DATA


def test_representation_layer_is_the_last_hidden_fc_else_logits():
    g = "invariance/G/"
    assert representation_layer([f"{g}conv4", f"{g}fc1", f"{g}logits"]) == "fc1"
    assert representation_layer([f"{g}fc1", f"{g}fc2", f"{g}logits"]) == "fc2"
    assert representation_layer([f"{g}conv5", f"{g}logits"]) == "logits"
    assert representation_layer(["finetune/acc_trained"]) is None


def test_layer_keys_split_one_way_for_scores_grids_and_final_grid_columns():
    from transinv import metrics

    columns = ["invariance/G/conv1", "invariance/I/conv1", "invariance/G_grid/fc1", "finetune/loss"]
    assert metrics.layers_of(columns) == {"invariance/G/conv1": "conv1"}
    assert metrics.layers_of(columns, "G_grid") == {"invariance/G_grid/fc1": "fc1"}
    assert metrics.invariance_parts(metrics.invariance_key("D", "fc1")) == ("D", "fc1")
    assert metrics.invariance_parts("invariance/G/") is None
    assert metrics.grid_column(metrics.g_grid_key("fc1")) == "G/fc1"
    assert g_at_start_column("fc1") == "invariance/G/fc1 at step 0"
    assert g_at_start_column(None) is None
