"""The pandas query API on known tables (the MLflow side is in test_study and test_report)."""

import pandas as pd
import pytest

from transinv.config import ConfigError
from transinv.constraints import Constraint, from_json, to_json
from transinv.results import best_regimes, best_so_far, summarize


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


def study_runs() -> pd.DataFrame:
    """Trials as `load_runs` gives them: `sampled_keys` from each run's tag, the study's
    constraints in attrs. pretrain.translation is sampled only with a pretraining set."""
    frame = pd.DataFrame(
        {
            "status": ["FINISHED"] * 6,
            "trial_id": list("abcdef"),
            "seed": [0, 0, 0, 0, 1, 0],
            "pretrain.dataset": ["none", "none", "glyphs", "glyphs", "glyphs", "glyphs"],
            "pretrain.translation": [0.5, 0.5, 0.2, 0.9, 0.9, 0.9],
            "finetune.freeze": ["none", "all_but_head", "none", "none", "none", "none"],
            "sampled_keys": [
                "pretrain.dataset,finetune.freeze",
                "pretrain.dataset,finetune.freeze",
                *["pretrain.dataset,pretrain.translation,finetune.freeze"] * 4,
            ],
            "acc_untrained": [0.1, 0.2, 0.5, 0.8, 0.6, 0.7],
            "acc_trained": [0.9, 0.3, 0.9, 0.9, 0.9, 0.9],
        }
    )
    frame.attrs["constraints"] = (Constraint("acc_trained", ">=", 0.5),)
    return frame


def test_best_regimes_defaults_to_the_studys_conditions_and_constraints():
    table = best_regimes(study_runs(), "acc_untrained")
    keys = ["pretrain.dataset", "pretrain.translation", "finetune.freeze"]
    assert list(table.columns[:3]) == keys
    # (none, all_but_head) misses the study's constraint; the rest are separate conditions
    rows = [tuple(r) for r in table[keys].itertuples(index=False)]
    assert rows[0] == ("glyphs", 0.9, "none") and rows[1] == ("glyphs", 0.2, "none")
    assert len(rows) == 3 and rows[2][0] == "none" and rows[2][2] == "none"
    assert table["n"].tolist() == [3, 1, 1]
    assert table["seeds"].tolist() == ["0,1", "0", "0"]  # distinct seeds, not one per trial
    assert table["acc_trained mean"].tolist() == pytest.approx([0.9, 0.9, 0.9])


def test_best_regimes_blanks_inactive_keys_and_never_pools_conditions():
    table = best_regimes(study_runs(), "acc_untrained", by=["finetune.freeze"])
    assert list(table.columns[:2]) == ["finetune.freeze", "pretrain.dataset"]
    vanilla = table[table["pretrain.dataset"] == "none"]
    assert len(vanilla) == 1 and pd.isna(vanilla["pretrain.translation"].iloc[0])
    assert len(table) == 3  # by= orders the columns; glyphs r=0.2 and r=0.9 stay apart


def test_where_adds_to_the_studys_constraints():
    table = best_regimes(study_runs(), "acc_untrained", where=[("acc_untrained", ">=", 0.4)])
    assert table["n"].tolist() == [3, 1]
    assert {"acc_trained mean", "acc_untrained mean"} <= set(table.columns)
    plain = study_runs()
    plain.attrs.clear()  # a frame of one's own: only `where` applies
    assert len(best_regimes(plain, "acc_untrained", by=["trial_id"])) == 6


def test_best_so_far_carries_the_best_feasible_value_in_launch_order():
    frame = pd.DataFrame(
        {
            "run_id": list("abcdef"),
            "status": ["FINISHED", "FINISHED", "FAILED", "FINISHED", "FINISHED", "FINISHED"],
            # launched c, a, b, f, d, e: the table's order is not the search's
            "start_time": pd.to_datetime([2, 3, 1, 5, 6, 4], unit="s", utc=True),
            "acc_untrained": [0.3, 0.9, 0.95, 0.5, 0.8, 0.4],
            "acc_trained": [1.0, 0.5, 1.0, 1.0, 1.0, 1.0],  # b misses the constraint
        }
    )
    frame.attrs["constraints"] = [Constraint("acc_trained", ">=", 0.9)]
    got = best_so_far(frame, "acc_untrained")
    assert got["run_id"].tolist() == list("cabfde")
    assert got["trial"].tolist() == [1, 2, 3, 4, 5, 6]
    # c failed (nothing found yet), b is infeasible (0.9 does not count), f is worse than a.
    assert got["feasible"].tolist() == [False, True, False, True, True, True]
    assert got["best"].tolist()[1:] == [0.3, 0.3, 0.4, 0.5, 0.8]
    assert pd.isna(got["best"].iloc[0])
    lowest = best_so_far(frame, "acc_untrained", mode="min", where=[("acc_untrained", ">", 0.35)])
    assert lowest["best"].tolist()[3:] == [0.4, 0.4, 0.4]  # a (0.3) now fails `where`
    with pytest.raises(ConfigError, match="mode"):
        best_so_far(frame, "acc_untrained", mode="up")
