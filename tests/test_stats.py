"""The intervals of :mod:`normlab.stats` against published textbook cases.

- Student's sleep data (Cushny & Peebles 1905, as analysed by "Student" 1908; R's ``sleep``
  data set): extra hours of sleep of 10 patients under two drugs. R's
  ``t.test(extra ~ group, data = sleep, paired = TRUE)`` prints the 95 % interval
  -2.4598858 to -0.7001142 of the mean difference, and the Welch test without ``paired``
  -3.3654832 to 0.2054832.
- Newcombe (1998a), "Two-sided confidence intervals for the single proportion: comparison of
  seven methods", Statistics in Medicine 17:857-872, Table I, Wilson score method: 81/263 →
  0.2553-0.3662, 15/148 → 0.0624-0.1605, 0/20 → 0-0.1611, 1/29 → 0.0061-0.1718.
- Newcombe (1998b), "Interval estimation for the difference between independent proportions:
  comparison of eleven methods", Statistics in Medicine 17:873-890, Table II, method 10 (score
  interval from the two Wilson intervals): 56/70 − 48/80 → 0.0524-0.3339 and
  9/10 − 3/10 → 0.1705-0.8090.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from normlab import stats

DRUG_1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
DRUG_2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]


def bounds(interval: stats.Interval) -> tuple[float, float]:
    return (interval.low, interval.high)


def test_paired_t_interval_of_the_sleep_data():
    patients = range(1, 11)
    first, second = pd.Series(DRUG_1, index=patients), pd.Series(DRUG_2, index=patients)
    difference = stats.paired_difference(first, second)
    assert difference.estimate == pytest.approx(-1.58)
    assert difference.n == 10
    assert bounds(difference) == pytest.approx((-2.4598858, -0.7001142), abs=1e-7)


def test_pairing_uses_only_keys_present_and_finite_in_both():
    first = pd.Series({0: 0.5, 1: 0.6, 2: 0.7, 3: float("nan")})
    second = pd.Series({1: 0.4, 2: 0.4, 3: 0.1, 4: 0.9})
    differences = stats.paired_differences(first, second)
    assert differences.to_dict() == {1: pytest.approx(0.2), 2: pytest.approx(0.3)}


def test_welch_interval_of_the_sleep_data():
    interval = stats.welch_interval(DRUG_1, DRUG_2)
    assert interval.estimate == pytest.approx(-1.58)
    assert bounds(interval) == pytest.approx((-3.3654832, 0.2054832), abs=1e-7)


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_wilson_interval_matches_newcombe_1998(k, n, low, high):
    interval = stats.wilson_interval(k, n)
    assert interval.estimate == pytest.approx(k / n)
    assert bounds(interval) == pytest.approx((low, high), abs=5e-5)


@pytest.mark.parametrize(
    ("k1", "n1", "k2", "n2", "low", "high"),
    [(56, 70, 48, 80, 0.0524, 0.3339), (9, 10, 3, 10, 0.1705, 0.8090)],
)
def test_difference_of_proportions_matches_newcombe_1998(k1, n1, k2, n2, low, high):
    interval = stats.newcombe_interval(k1, n1, k2, n2)
    assert interval.estimate == pytest.approx(k1 / n1 - k2 / n2)
    assert bounds(interval) == pytest.approx((low, high), abs=5e-5)


def test_a_mean_needs_two_values_for_an_interval():
    assert math.isnan(stats.mean_interval([]).estimate)
    one = stats.mean_interval([0.4, float("nan"), float("inf")])
    assert (one.estimate, one.n) == (0.4, 1) and not one.defined
    assert one.text(100.0) == "40.0"
    assert stats.mean_interval([]).text() == "–"
    assert not stats.wilson_interval(0, 0).defined


def test_t_interval_of_two_values_by_hand():
    # mean 0.5, s = 0.1414, t(0.975, 1) = 12.706 (t table): 0.5 ± 12.706 · 0.1414 / √2
    interval = stats.mean_interval([0.4, 0.6])
    assert bounds(interval) == pytest.approx((0.5 - 1.2706, 0.5 + 1.2706), abs=1e-3)
    assert interval.text(100.0) == "50.0 [-77.1, 177.1]"


def test_bootstrap_option_by_hand():
    # resampled means of {0, 1} are 0, 0.5 and 1 with chances 1/4, 1/2, 1/4: the 2.5 % and
    # 97.5 % quantiles are 0 and 1
    with stats.interval_method("bootstrap"):
        interval = stats.mean_interval([0.0, 1.0])
        assert stats.describe().startswith("95 % percentile-bootstrap interval")
        again = stats.mean_interval([0.0, 1.0])
    assert (interval.estimate, *bounds(interval)) == (0.5, 0.0, 1.0)
    assert interval == again  # seeded: the same interval on every run
    assert stats.current_method() == "t"
    assert bounds(stats.mean_interval([0.3, 0.3, 0.3], method="bootstrap")) == (0.3, 0.3)
    with pytest.raises(ValueError, match="interval method"), stats.interval_method("jackknife"):
        pass


# ----------------------------------------------------------------------------- tests of settings

SLEEP_DIFFERENCES = [a - b for a, b in zip(DRUG_1, DRUG_2, strict=True)]


@pytest.mark.parametrize("alternative", ["greater", "less", "two-sided"])
@pytest.mark.parametrize("null", [0.0, -1.0, -2.5])
def test_t_p_value_is_scipys_one_sample_t_test(alternative, null):
    expected = scipy_stats.ttest_1samp(SLEEP_DIFFERENCES, null, alternative=alternative).pvalue
    assert stats.t_p_value(SLEEP_DIFFERENCES, null, alternative) == pytest.approx(expected)
    inverted = stats.interval_p_value(
        lambda level: stats.mean_interval(SLEEP_DIFFERENCES, level), null, alternative
    )
    assert inverted == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("alternative", ["greater", "less", "two-sided"])
@pytest.mark.parametrize("null", [0.0, -1.0])
def test_inverting_welchs_interval_gives_welchs_test(alternative, null):
    shifted = [value - null for value in DRUG_1]
    expected = scipy_stats.ttest_ind(shifted, DRUG_2, equal_var=False, alternative=alternative)
    inverted = stats.interval_p_value(
        lambda level: stats.welch_interval(DRUG_1, DRUG_2, level), null, alternative
    )
    assert inverted == pytest.approx(expected.pvalue, rel=1e-9)


def test_inverted_p_value_puts_the_bound_on_the_null():
    def interval_at(level):
        return stats.newcombe_interval(56, 70, 48, 80, level)

    p = stats.interval_p_value(interval_at, 0.1, "greater")
    assert interval_at(1 - 2 * p).low == pytest.approx(0.1, abs=1e-9)
    assert stats.interval_p_value(interval_at, 0.1, "less") == pytest.approx(1 - p)
    assert math.isnan(stats.interval_p_value(lambda level: stats.mean_interval([0.3], level)))
    with pytest.raises(ValueError, match="alternative"):
        stats.t_p_value(SLEEP_DIFFERENCES, 0.0, "above")


def test_equal_differences_decide_as_their_zero_width_interval():
    assert stats.t_p_value([0.25, 0.25, 0.25], 0.0, "greater") == 0.0
    assert stats.t_p_value([0.25, 0.25, 0.25], 0.5, "greater") == 1.0
    assert stats.t_p_value([0.25, 0.25], 0.25, "greater") == 0.5
    assert math.isnan(stats.t_p_value([0.2, math.nan]))


def test_holm_on_one_setting_decides_as_the_95_percent_t_interval():
    interval = stats.mean_interval(SLEEP_DIFFERENCES)
    for null in np.linspace(-3.0, 0.5, 36):
        p_above, p_below = (
            stats.t_p_value(SLEEP_DIFFERENCES, null, side) for side in ("greater", "less")
        )
        assert stats.holm_rejects([p_above])[0] == (interval.low > null)
        assert stats.holm_rejects([p_below])[0] == (interval.high < null)


def test_holm_on_one_setting_decides_as_the_95_percent_bootstrap_interval():
    interval = stats.mean_interval(SLEEP_DIFFERENCES, method="bootstrap")
    for null in (interval.low - 0.01, interval.low + 0.01, interval.high + 0.01, -1.0, 0.5):
        p_above, p_below = (
            stats.interval_p_value(
                lambda level: stats.mean_interval(SLEEP_DIFFERENCES, level, "bootstrap"),
                null,
                side,
            )
            for side in ("greater", "less")
        )
        assert stats.holm_rejects([p_above])[0] == (interval.low > null)
        assert stats.holm_rejects([p_below])[0] == (interval.high < null)


def test_holm_on_wikipedias_example():
    # Wikipedia, "Holm–Bonferroni method", example: p = 0.01, 0.04, 0.03, 0.005 at α = 0.05.
    # Sorted 0.005, 0.01, 0.03, 0.04 → 4·0.005 = 0.02, 3·0.01 = 0.03, 2·0.03 = 0.06, and
    # 1·0.04 = 0.04 raised to the 0.06 before it: H1 and H4 are rejected, H2 and H3 are not.
    p = [0.01, 0.04, 0.03, 0.005]
    assert stats.holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm_rejects(p, alpha=0.05).tolist() == [True, False, False, True]


def test_holm_caps_at_one_and_skips_settings_without_a_test():
    # m = 3 finite: 3·0.01 = 0.03, 2·0.3 = 0.6, 1·0.9 = 0.9; and 2·0.6 = 1.2 → 1
    adjusted = stats.holm([0.3, math.nan, 0.9, 0.01])
    assert adjusted[[0, 2, 3]] == pytest.approx([0.6, 0.9, 0.03])
    assert math.isnan(adjusted[1])
    assert stats.holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])
    assert stats.holm_rejects([0.3, math.nan, 0.9, 0.01], 0.05).tolist() == [
        False,
        False,
        False,
        True,
    ]
    assert stats.holm([]).size == 0
    assert stats.bonferroni_level(4) == pytest.approx(0.9875)


# ----------------------------------------------------------------------------- aggregates


def test_probability_of_improvement_by_enumeration():
    # x = 1 beats 0 only (1); x = 2 ties both 2s and beats 0 (0.5 + 0.5 + 1); x = 3 beats all
    # three (3): 6 of 9 pairs
    assert stats.probability_of_improvement([1, 2, 3], [2, 2, 0]) == pytest.approx(6 / 9)
    u = scipy_stats.mannwhitneyu([1, 2, 3], [2, 2, 0], alternative="greater").statistic
    assert stats.probability_of_improvement([1, 2, 3], [2, 2, 0]) == pytest.approx(u / 9)
    assert stats.probability_of_improvement([0.4, 0.5], [0.4, 0.5]) == 0.5
    assert math.isnan(stats.probability_of_improvement([], [1.0]))


def test_failed_runs_rank_last_and_tie_with_each_other():
    # pairs: (fail, fail) ½, (fail, 0.6) 0, (0.5, fail) 1, (0.5, 0.6) 0, (0.7, fail) 1,
    # (0.7, 0.6) 1: 3.5 of 6
    x, y = [math.nan, 0.5, 0.7], [-math.inf, 0.6]
    assert stats.probability_of_improvement(x, y) == pytest.approx(3.5 / 6)
    assert stats.probability_of_improvement([math.nan], [-1e9]) == 0.0


def test_probability_of_improvement_averages_settings():
    # settings: 6/9 (above) and 0 (0 < 1)
    mean = stats.mean_probability_of_improvement([[1, 2, 3], [0]], [[2, 2, 0], [1]])
    assert mean == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        stats.mean_probability_of_improvement([[1]], [[1], [2]])


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([5, 1, 4, 2, 3], 3.0),  # n = 5: drop 1 each end, mean of 2, 3, 4
        ([10, 1, 4, 2, 3, 100], 4.75),  # n = 6: drop 1 each end, (2 + 3 + 4 + 10) / 4
        ([7, 1, 6, 2, 5, 3, 40], 4.6),  # n = 7: drop 1 each end, (2 + 3 + 5 + 6 + 7) / 5
        ([80, 1, 2, 3, 4, 5, 6, 7], 4.5),  # n = 8: drop 2 each end, (3 + 4 + 5 + 6) / 4
        ([math.nan, 4, 1, 3, 2], 2.0),  # the failure ranks last: drop it and 4, mean of 1, 2, 3
        ([1.0, 2.0, 3.0], 2.0),  # n = 3: nothing dropped
    ],
)
def test_interquartile_mean_by_hand(values, expected):
    assert stats.iqm(values) == pytest.approx(expected)


def test_interquartile_mean_pools_settings_of_any_size():
    # 8 scores pooled: 1 2 3 4 5 6 7 80 → mean of 3, 4, 5, 6
    assert stats.iqm([[80, 1, 2], [3, 4, 5, 6, 7]]) == pytest.approx(4.5)
    assert stats.iqm(np.array([[80, 1, 2, 3], [4, 5, 6, 7]])) == pytest.approx(4.5)
    assert math.isnan(stats.iqm([]))


def test_stratified_bootstrap_matches_the_enumerated_distribution():
    # Three settings of three seeds: 27³ equally likely resamples, each enumerated. The Monte
    # Carlo quantile q̂ of p is exact to within the sampling error of the empirical CDF:
    # Q(p - δ) ≤ q̂ ≤ Q(p + δ) with δ five standard errors √(p(1 - p) / reps).
    settings = [np.array([0.1, 0.4, 0.35]), np.array([0.8, 0.2, 0.55]), np.array([0.3, 0.9, 0.6])]
    picks = list(itertools.product(range(3), repeat=3))
    exact = np.sort(
        [
            stats.iqm([s[list(i)] for s, i in zip(settings, chosen, strict=True)])
            for chosen in itertools.product(picks, repeat=3)
        ]
    )
    reps = 10_000
    interval = stats.stratified_bootstrap_ci(stats.iqm, settings, reps, 0.95, rng=1)
    assert interval.estimate == pytest.approx(stats.iqm(settings))
    assert interval.n == 9
    for p, bound in ((0.025, interval.low), (0.975, interval.high)):
        delta = 5 * math.sqrt(p * (1 - p) / reps)
        lowest, highest = np.quantile(exact, [p - delta, p + delta], method="inverted_cdf")
        assert lowest <= bound <= highest
        assert highest - lowest < 0.05  # narrow enough to tell a wrong resampling scheme


def test_stratified_bootstrap_resamples_seeds_whole():
    # the second method scores exactly 0.1 below the first on every seed: a paired resample
    # always gives a difference of 0.1, an independent one rarely
    first = [np.array([0.5, 0.9, 0.2]), np.array([0.6, 0.3, 0.8])]
    second = [values - 0.1 for values in first]
    paired = stats.iqm_difference(first, second, reps=500)
    assert (paired.estimate, paired.low, paired.high) == pytest.approx((0.1, 0.1, 0.1))
    independent = stats.iqm_difference(first, second, paired=False, reps=500)
    assert independent.low < 0 < 0.2 < independent.high
    again = stats.iqm_difference(first, second, paired=False, reps=500)
    assert again == independent  # seeded


def test_probability_of_improvement_interval_holds_the_estimate():
    x = [[0.6, 0.7, 0.8], [0.5, 0.55]]
    y = [[0.5, 0.65, 0.4], [0.6, math.nan]]
    interval = stats.probability_of_improvement_interval(x, y, reps=500)
    # setting 1: 0.6 > 0.5, 0.4; 0.7 and 0.8 beat all → 8/9; setting 2: each beats the failure
    # only → 2/4
    assert interval.estimate == pytest.approx((8 / 9 + 2 / 4) / 2)
    assert 0 <= interval.low <= interval.estimate <= interval.high <= 1
    assert not stats.stratified_bootstrap_ci(stats.iqm, [np.array([])]).defined


def test_paired_settings_need_one_score_per_seed():
    with pytest.raises(ValueError, match="one score per seed"):
        stats.iqm_difference([[0.5, 0.6]], [[0.5]])
    with pytest.raises(ValueError, match="settings"):
        stats.iqm_difference([[0.5]], [[0.5], [0.6]], paired=False)
