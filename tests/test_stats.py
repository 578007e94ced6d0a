"""Known answers for the report's statistics (transinv/stats.py): Welch's t against scipy's,
the one-sample and paired t, the seed bootstrap of Spearman's rho, the binomial fraction, TOST
and Holm's step-down correction."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from transinv import stats


def test_welch_matches_scipy_and_its_interval_covers_the_difference():
    a, b = [0.40, 0.42, 0.38, 0.45, 0.41], [0.10, 0.20, 0.09, 0.15]
    estimate = stats.welch(a, b)
    reference = scipy_stats.ttest_ind(a, b, equal_var=False)
    assert estimate.p == pytest.approx(reference.pvalue)
    ci = reference.confidence_interval(0.95)
    assert (estimate.ci_low, estimate.ci_high) == pytest.approx((ci.low, ci.high))
    assert estimate.effect == pytest.approx(np.mean(a) - np.mean(b))
    assert estimate.n == (5, 4) and estimate.method == stats.WELCH


def test_one_sample_and_paired_t_match_scipy():
    x = [0.1, 0.3, 0.25, 0.2]
    estimate = stats.one_sample(x, 0.1)
    assert estimate.p == pytest.approx(scipy_stats.ttest_1samp(x, 0.1).pvalue)
    a, b = [1.0, 0.9, 0.95], [0.2, 0.1, 0.3]
    assert stats.paired(a, b).p == pytest.approx(scipy_stats.ttest_rel(a, b).pvalue)


def test_identical_replicates_give_a_point_interval_and_one_replicate_none():
    same = stats.welch([0.0, 0.0, 0.0], [0.0, 0.0])
    assert (same.effect, same.ci_low, same.ci_high, same.p) == (0.0, 0.0, 0.0, 1.0)
    shifted = stats.welch([1.0, 1.0], [0.0, 0.0])
    assert shifted.p == 0.0 and shifted.ci_low == 1.0
    single = stats.welch([1.0], [0.0, 0.1])
    assert math.isnan(single.p) and single.effect == pytest.approx(0.95)
    assert stats.welch([], [1.0]).empty


def test_spearman_bootstrap_is_seeded_and_sees_a_monotone_trend():
    x = [0, 0, 0, 1, 1, 1, 2, 2, 2]
    rising = stats.spearman(x, [0.1, 0.12, 0.11, 0.3, 0.31, 0.29, 0.6, 0.62, 0.61])
    assert rising.effect == pytest.approx(
        scipy_stats.spearmanr(
            x, rising_y := [0.1, 0.12, 0.11, 0.3, 0.31, 0.29, 0.6, 0.62, 0.61]
        ).statistic
    )  # noqa: E501
    assert rising.p < 0.01 and rising.ci_low > 0.5
    flat = stats.spearman(x, [0.1, 0.2, 0.3] * 3)
    assert flat.effect == pytest.approx(0.0) and flat.p > 0.5
    assert stats.spearman(x, rising_y) == rising


def test_fraction_is_exact_binomial():
    estimate = stats.fraction(12, 12, 0.5)
    assert estimate.effect == pytest.approx(0.5)
    assert estimate.p == pytest.approx(scipy_stats.binomtest(12, 12, 0.5).pvalue)
    assert estimate.ci_low > 0


def test_equivalence_p_inside_and_outside_the_margin():
    inside = stats.one_sample([0.01, -0.01, 0.0, 0.005, -0.005])
    assert stats.equivalence_p(inside, 0.1) < 0.001
    wide = stats.one_sample([0.2, -0.2, 0.0, 0.1, -0.1])
    assert stats.equivalence_p(wide, 0.1) > 0.05


def test_holm_adjusts_step_down_and_keeps_order():
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    adjusted = stats.holm([0.5, math.nan, 0.001])
    assert adjusted[0] == pytest.approx(0.5) and math.isnan(adjusted[1])
    assert adjusted[2] == pytest.approx(0.002)
