"""Intervals for the figures, tables and claims, in one place.

- :func:`mean_interval`: the mean over seeds with a 95 % Student t interval
  (``mean ± t(0.975, n-1) s / √n``) or, under :func:`interval_method` ``("bootstrap")``, a
  percentile bootstrap of the mean (seeded, so a rerun gives the same interval);
- :func:`paired_difference`: differences between two modes paired by seed, and their interval;
- :func:`welch_interval`: the difference of two independent means (Welch–Satterthwaite df),
  for comparisons across batch sizes, where runs share no pairing;
- :func:`wilson_interval`: a proportion (how often runs diverged) with the Wilson score interval;
- :func:`newcombe_interval`: the difference of two proportions from their Wilson intervals
  (Newcombe 1998, method 10).

An interval needs two values (or, for a proportion, one run); with fewer its bounds are NaN.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as _scipy

LEVEL = 0.95
METHODS = ("t", "bootstrap")
RESAMPLES = 10_000
SEED = 0

_METHOD: contextvars.ContextVar[str] = contextvars.ContextVar("interval_method", default="t")


@dataclass(frozen=True)
class Interval:
    """An estimate with its confidence interval (``low``, ``high``) from ``n`` values."""

    estimate: float
    low: float
    high: float
    n: int
    method: str

    @property
    def defined(self) -> bool:
        return math.isfinite(self.low) and math.isfinite(self.high)

    def scaled(self, factor: float) -> Interval:
        return Interval(
            self.estimate * factor, self.low * factor, self.high * factor, self.n, self.method
        )

    def text(self, scale: float = 1.0, digits: int = 1) -> str:
        """``"63.0 [54.0, 72.0]"``; the estimate alone without an interval; "–" without either."""
        if not math.isfinite(self.estimate):
            return "–"
        estimate = f"{self.estimate * scale:.{digits}f}"
        if not self.defined:
            return estimate
        return f"{estimate} [{self.low * scale:.{digits}f}, {self.high * scale:.{digits}f}]"


NO_VALUES = Interval(math.nan, math.nan, math.nan, 0, "t")


@contextlib.contextmanager
def interval_method(method: str) -> Iterator[None]:
    """Use ``method`` (``t`` or ``bootstrap``) for every mean interval computed inside."""
    if method not in METHODS:
        raise ValueError(f"interval method must be one of {', '.join(METHODS)}, got {method!r}")
    token = _METHOD.set(method)
    try:
        yield
    finally:
        _METHOD.reset(token)


def current_method() -> str:
    return _METHOD.get()


def describe(method: str | None = None) -> str:
    """The words a caption or legend uses for the mean intervals in force."""
    method = method or current_method()
    if method == "bootstrap":
        return f"95 % percentile-bootstrap interval ({RESAMPLES} resamples)"
    return "95 % t interval"


def finite(values: Iterable[float]) -> np.ndarray:
    array = pd.to_numeric(pd.Series(list(values), dtype=object), errors="coerce")
    array = array.to_numpy(float)
    return array[np.isfinite(array)]


def t_critical(df: float, level: float = LEVEL) -> float:
    return float(_scipy.t.ppf(0.5 + level / 2, df))


def mean_interval(
    values: Iterable[float], level: float = LEVEL, method: str | None = None
) -> Interval:
    """The mean of the finite ``values`` and its interval (t by default, see module)."""
    method = method or current_method()
    data = finite(values)
    n = len(data)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, method)
    centre = float(data.mean())
    if n == 1:
        return Interval(centre, math.nan, math.nan, 1, method)
    if method == "bootstrap":
        low, high = _bootstrap_bounds(data, level)
        return Interval(centre, low, high, n, method)
    half = t_critical(n - 1, level) * float(data.std(ddof=1)) / math.sqrt(n)
    return Interval(centre, centre - half, centre + half, n, method)


def _bootstrap_bounds(data: np.ndarray, level: float) -> tuple[float, float]:
    rng = np.random.default_rng(SEED)
    means = data[rng.integers(0, len(data), size=(RESAMPLES, len(data)))].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


def paired_differences(first: pd.Series, second: pd.Series) -> pd.Series:
    """``first - second`` for every key (seed) in both indexes with finite values, by key."""
    joined = pd.concat(
        {"first": pd.to_numeric(first), "second": pd.to_numeric(second)}, axis=1, join="inner"
    )
    joined = joined.loc[np.isfinite(joined["first"]) & np.isfinite(joined["second"])]
    return (joined["first"] - joined["second"]).sort_index()


def paired_difference(
    first: pd.Series, second: pd.Series, level: float = LEVEL, method: str | None = None
) -> Interval:
    """Mean of the per-seed differences ``first - second`` (series indexed by seed)."""
    return mean_interval(paired_differences(first, second), level, method)


def welch_interval(
    first: Iterable[float], second: Iterable[float], level: float = LEVEL
) -> Interval:
    """``mean(first) - mean(second)`` of independent samples, with Welch's t interval."""
    a, b = finite(first), finite(second)
    n = min(len(a), len(b))
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, "welch")
    centre = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return Interval(centre, math.nan, math.nan, len(a) + len(b), "welch")
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return Interval(centre, centre, centre, len(a) + len(b), "welch")
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = t_critical(df, level) * se
    return Interval(centre, centre - half, centre + half, len(a) + len(b), "welch")


def _z(level: float) -> float:
    return float(_scipy.norm.ppf(0.5 + level / 2))


def wilson_interval(k: int, n: int, level: float = LEVEL) -> Interval:
    """The proportion ``k / n`` with its Wilson score interval."""
    if n <= 0:
        return Interval(math.nan, math.nan, math.nan, 0, "wilson")
    z = _z(level)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half), n, "wilson")


def newcombe_interval(k1: int, n1: int, k2: int, n2: int, level: float = LEVEL) -> Interval:
    """``k1/n1 - k2/n2`` with Newcombe's hybrid score interval (1998, method 10): the distance
    from each proportion to its Wilson bound, combined in quadrature."""
    first, second = wilson_interval(k1, n1, level), wilson_interval(k2, n2, level)
    if n1 <= 0 or n2 <= 0:
        return Interval(math.nan, math.nan, math.nan, max(n1, 0) + max(n2, 0), "newcombe")
    p1, p2 = first.estimate, second.estimate
    low = p1 - p2 - math.hypot(p1 - first.low, second.high - p2)
    high = p1 - p2 + math.hypot(first.high - p1, p2 - second.low)
    return Interval(p1 - p2, low, high, n1 + n2, "newcombe")
