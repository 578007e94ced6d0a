"""The report's arithmetic outside the checks, on hand-made trial times (no MLflow needed)."""

from __future__ import annotations

import pandas as pd

from transinv.study_cost import most_at_once, running_seconds


def at(*minutes: float) -> pd.Series:
    return pd.Series(pd.Timestamp("2026-12-01") + pd.to_timedelta(minutes, unit="min"))


def test_a_study_resumed_a_day_later_counts_its_running_time_not_the_day_between():
    # Two trials at once for 10 min, a third overlapping the second's end; then, a day later,
    # a resumed trial of 5 min. First start to last end would be 1 day 5 min.
    starts = at(0, 2, 9, 24 * 60)
    ends = at(8, 10, 12, 24 * 60 + 5)
    assert running_seconds(starts, ends) == (12 + 5) * 60


def test_nested_and_unsorted_intervals_count_once():
    assert running_seconds(at(5, 0, 1), at(6, 10, 2)) == 10 * 60
    assert running_seconds(at(), at()) == 0


def test_touching_intervals_join_but_never_overlap():
    assert running_seconds(at(0, 5), at(5, 10)) == 10 * 60
    assert most_at_once(at(0, 5), at(5, 10)) == 1
    assert most_at_once(at(0, 2, 9), at(8, 10, 12)) == 2
