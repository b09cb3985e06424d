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

import math

import pandas as pd
import pytest

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
