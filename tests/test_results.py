"""The pandas query API on known tables (the MLflow side is in test_study and test_report)."""

import pandas as pd
import pytest

from transinv.constraints import Constraint, from_json, to_json
from transinv.results import best_regimes, summarize


def runs() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "status": ["FINISHED"] * 6,
            "regime": ["a", "a", "a", "b", "b", "b"],
            "seed": [0, 1, 2, 0, 1, 2],
            "acc_untrained": [0.9, 0.8, 0.7, 0.5, 0.4, 0.6],
            # a learns the trained place with two seeds of three; b with all three
            "acc_trained": [1.0, 1.0, 0.4, 0.95, 0.95, 0.95],
        }
    )


def test_best_regimes_ranks_conditions_with_spread_over_seeds():
    table = best_regimes(runs(), "acc_untrained", by=["regime"])
    assert list(table["regime"]) == ["a", "b"]
    assert table["mean"].tolist() == pytest.approx([0.8, 0.5])
    assert table["n"].tolist() == [3, 3] and table["seeds"].tolist() == ["0,1,2", "0,1,2"]


def test_constraints_apply_to_a_conditions_mean_not_to_single_seeds():
    """Dropping the seed of `a` that fails would make it look feasible and better than it is."""
    table = best_regimes(runs(), "acc_untrained", by=["regime"], where=[("acc_trained", ">=", 0.9)])
    assert list(table["regime"]) == ["b"]
    assert table["n"].tolist() == [3]
    assert table["acc_trained mean"].tolist() == pytest.approx([0.95])


def test_summarize_gives_mean_std_and_n_per_condition():
    table = summarize(runs(), ["regime"], ["acc_untrained"])
    assert table.set_index("regime")["acc_untrained mean"].to_dict() == pytest.approx(
        {"a": 0.8, "b": 0.5}
    )
    assert table["n"].tolist() == [3, 3]
    whole = summarize(runs(), [], ["acc_untrained"])
    assert whole["n"].tolist() == [6]


def test_constraints_parse_or_name_the_expected_form():
    from transinv.config import ConfigError

    assert Constraint.parse("finetune/acc_trained >= 0.9") == ("finetune/acc_trained", ">=", 0.9)
    assert Constraint.parse("finetune/loss<1e-1") == Constraint("finetune/loss", "<", 0.1)
    bad = ("finetune/acc_trained >= high", "acc ~ 0.9", "acc >= 0.9 extra", "finetune/acc == 1")
    for text in bad:
        with pytest.raises(ConfigError, match="METRIC OP VALUE"):
            Constraint.parse(text, "--where")


def test_constraints_test_numbers_and_columns_alike():
    at_least = Constraint("finetune/acc_trained", ">=", 0.5)
    column = pd.Series([0.4, 0.5, float("nan")])
    assert at_least.test(column).tolist() == [False, True, False]
    assert at_least.test(0.5) and not at_least.test(0.4)


def test_constraints_travel_as_json_not_as_text():
    given = (Constraint("finetune/acc_trained", ">=", 0.9), Constraint("finetune/loss", "<", 1.0))
    assert from_json(to_json(given)) == given
    assert from_json(None) == () and from_json("") == ()
