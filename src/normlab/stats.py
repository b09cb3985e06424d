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

Tests and aggregates across settings:

- :func:`t_p_value`: the one-sample t test that matches the t interval of :func:`mean_interval`,
  and :func:`interval_p_value`, the p-value of any interval family, found by inverting it;
- :func:`holm` and :func:`holm_rejects`: Holm's (1979) step-down adjustment over settings, and
  :func:`bonferroni_level`, the level of intervals that hold simultaneously over them;
- :func:`probability_of_improvement`, :func:`iqm` and :func:`stratified_bootstrap_ci`: the
  aggregates of rliable (Agarwal et al. 2021, arXiv 2108.13264) over settings and seeds.

Verdicts are one-sided tests read off a two-sided interval: its low bound lies above ``c`` exactly
when the one-sided p-value of "the effect exceeds ``c``" is below ``(1 - level) / 2``
(:data:`ONE_SIDED_ALPHA` at 95 %). Holm's adjustment of such p-values at that alpha therefore
decides a single setting as its interval does.

Failed (diverged) runs in :func:`probability_of_improvement` and :func:`iqm` are scores of NaN or
−inf and rank below every finite score (higher is better; negate a loss); two failures tie.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import special as _special  # scipy.stats costs seconds to import; these do not

LEVEL = 0.95
METHODS = ("t", "bootstrap")
RESAMPLES = 10_000
SEED = 0
ONE_SIDED_ALPHA = (1 - LEVEL) / 2
ALTERNATIVES = ("greater", "less", "two-sided")

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
    return float(_special.stdtrit(df, 0.5 + level / 2))


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
    return float(_special.ndtri(0.5 + level / 2))


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


# ----------------------------------------------------------------------------- tests


def _check_alternative(alternative: str) -> None:
    if alternative not in ALTERNATIVES:
        raise ValueError(
            f"alternative must be one of {', '.join(ALTERNATIVES)}, got {alternative!r}"
        )


def t_p_value(values: Iterable[float], null: float = 0.0, alternative: str = "greater") -> float:
    """The one-sample t test of the finite ``values``' mean against ``null`` (scipy's
    ``ttest_1samp`` semantics: ``greater`` tests H0: mean ≤ null against mean > null). NaN with
    fewer than two values; equal values give 0 or 1 (0.5 at the null), as their zero-width
    interval decides."""
    _check_alternative(alternative)
    data = finite(values)
    if len(data) < 2:
        return math.nan
    shift = float(data.mean()) - null
    scale = float(data.std(ddof=1)) / math.sqrt(len(data))
    statistic = shift / scale if scale > 0 else math.copysign(math.inf, shift) if shift else 0.0
    return _t_tail_p_value(len(data) - 1, statistic, alternative)


def _t_tail_p_value(df: int, statistic: float, alternative: str) -> float:
    if alternative == "greater":
        return float(_special.stdtr(df, -statistic))
    if alternative == "less":
        return float(_special.stdtr(df, statistic))
    return float(min(1.0, 2 * _special.stdtr(df, -abs(statistic))))


def interval_p_value(
    interval_at: Callable[[float], Interval], null: float = 0.0, alternative: str = "greater"
) -> float:
    """The p-value that agrees with an interval family: ``interval_at(level)`` (e.g.
    ``lambda level: newcombe_interval(k1, n1, k2, n2, level)``) has its low bound above ``null``
    exactly when the ``greater`` p-value is below ``(1 - level) / 2``, its high bound below
    ``null`` when the ``less`` one is, and excludes ``null`` when the ``two-sided`` one is below
    ``1 - level``. Found by bisection on the level; NaN where the family gives no interval. For
    the t interval it equals :func:`t_p_value`."""
    _check_alternative(alternative)
    if not interval_at(0.5).defined:
        return math.nan
    if alternative != "two-sided":
        return _one_sided(interval_at, null, upper=alternative == "less")
    above, below = (_one_sided(interval_at, null, upper) for upper in (False, True))
    return min(1.0, 2 * min(above, below))


def _one_sided(interval_at: Callable[[float], Interval], null: float, upper: bool) -> float:
    """P-value of "the effect lies below ``null``" (``upper``) or above it: half of one minus
    the level at which that bound of the interval reaches ``null``."""

    def excludes(level: float, upper: bool) -> bool:
        interval = interval_at(level)
        return interval.high < null if upper else interval.low > null

    if not excludes(0.0, upper):
        # the level-0 interval (the estimate) holds the null, or lies on its other side
        return 1 - _one_sided(interval_at, null, not upper) if excludes(0.0, not upper) else 0.5
    inside, outside = 0.0, 1.0  # excludes at ``inside``; the level ``outside`` is never tried
    for _ in range(50):
        middle = (inside + outside) / 2
        inside, outside = (middle, outside) if excludes(middle, upper) else (inside, middle)
    return (1 - inside) / 2


def holm(p_values: ArrayLike) -> np.ndarray:
    """Holm's step-down adjusted p-values, in the order given: with the m finite p-values sorted,
    the i-th smallest (from 0) becomes the largest of ``min(1, (m - j) p_(j))`` over j ≤ i.
    NaN p-values (settings that gave no test) stay NaN and do not count in m."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full(p.shape, math.nan)
    tested = np.flatnonzero(np.isfinite(p))
    order = tested[np.argsort(p[tested], kind="stable")]
    m = len(order)
    steps = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted[order] = np.maximum.accumulate(steps)
    return adjusted


def holm_rejects(p_values: ArrayLike, alpha: float = ONE_SIDED_ALPHA) -> np.ndarray:
    """Which hypotheses Holm's procedure rejects with family-wise error ``alpha`` (adjusted p ≤
    alpha); NaN p-values are not rejected. The default suits the one-sided p-values of the
    verdicts (see the module docstring)."""
    adjusted = holm(p_values)
    return np.isfinite(adjusted) & (adjusted <= alpha)


def bonferroni_level(m: int, level: float = LEVEL) -> float:
    """The level at which ``m`` intervals hold together with probability ``level``
    (``1 - (1 - level) / m``): to draw intervals that go with Holm's decisions. Holm rejects at
    least what these intervals exclude, so a setting may be decided with its bound just inside."""
    return 1 - (1 - level) / max(m, 1)


# ----------------------------------------------------------------------------- aggregates


def _scores(values: ArrayLike) -> np.ndarray:
    """The scores as a flat float array with failures (NaN) at −inf: they rank last."""
    scores = np.asarray(values, dtype=float).ravel()
    return np.where(np.isnan(scores), -math.inf, scores)


def _pooled(values: ArrayLike | Iterable[ArrayLike]) -> np.ndarray:
    """All scores of a flat or nested array, or of a list of arrays of any lengths, in one."""
    if isinstance(values, np.ndarray):
        return _scores(values)
    parts = [_scores(np.atleast_1d(part)) for part in values]
    return np.concatenate(parts) if parts else np.empty(0)


def probability_of_improvement(x: ArrayLike, y: ArrayLike) -> float:
    """P(X > Y) + P(X = Y) / 2 over all pairs of a run of ``x`` and a run of ``y`` in one
    setting: the Mann–Whitney U of ``x`` over ``y`` divided by the number of pairs (rliable).
    Failures rank last (module docstring); NaN without runs on either side."""
    a, b = _scores(x), _scores(y)
    if a.size == 0 or b.size == 0:
        return math.nan
    greater = np.mean(a[:, None] > b[None, :])
    ties = np.mean(a[:, None] == b[None, :])
    return float(greater + ties / 2)


def mean_probability_of_improvement(
    x_per_setting: Sequence[ArrayLike], y_per_setting: Sequence[ArrayLike]
) -> float:
    """:func:`probability_of_improvement` of each setting, averaged over the settings (rliable's
    average over tasks). NaN if a setting lacks runs on either side."""
    values = [
        probability_of_improvement(x, y) for x, y in zip(x_per_setting, y_per_setting, strict=True)
    ]
    return float(np.mean(values)) if values else math.nan


def iqm(values: ArrayLike | Iterable[ArrayLike]) -> float:
    """The interquartile mean of all scores pooled (a flat array, or one array per setting, as
    rliable pools runs × tasks): the mean after dropping ``floor(n / 4)`` scores from each end
    of the sorted scores (``scipy.stats.trim_mean(scores, 0.25)``). Failures rank last, so the
    result is −inf once they exceed a quarter of the scores: pass a finite failure score (e.g.
    chance accuracy) where that matters."""
    scores = np.sort(_pooled(values))
    if scores.size == 0:
        return math.nan
    cut = int(0.25 * scores.size)
    return float(scores[cut : scores.size - cut].mean())


def stratified_bootstrap_ci(
    statistic: Callable[[list[np.ndarray]], float],
    samples_per_setting: Sequence[ArrayLike],
    reps: int = RESAMPLES,
    level: float = LEVEL,
    rng: np.random.Generator | int = SEED,
) -> Interval:
    """``statistic`` of the samples with rliable's percentile interval from a stratified
    bootstrap: each resample draws, within every setting independently, as many rows as it has
    from its rows with replacement; the bounds are the ``(1 - level) / 2`` and
    ``(1 + level) / 2`` quantiles (linearly interpolated, as ``np.percentile``) of the statistic
    over ``reps`` resamples.

    ``samples_per_setting[i]`` holds setting i's seeds along its first axis; a row moves whole,
    so columns (say two methods' scores of one seed) stay paired. ``statistic`` receives the list
    of resampled arrays, in the order given. ``rng`` is a generator or a seed (default: the
    module's, so a rerun gives the same interval). ``n`` counts the rows of all settings."""
    strata = [np.asarray(sample, dtype=float) for sample in samples_per_setting]
    n = sum(len(stratum) for stratum in strata)
    if not strata or any(len(stratum) == 0 for stratum in strata):
        return Interval(math.nan, math.nan, math.nan, n, "stratified bootstrap")
    generator = np.random.default_rng(rng)
    rows = [generator.integers(0, len(stratum), size=(reps, len(stratum))) for stratum in strata]
    replicates = np.array(
        [
            statistic([stratum[drawn[rep]] for stratum, drawn in zip(strata, rows, strict=True)])
            for rep in range(reps)
        ]
    )
    tail = (1 - level) / 2
    low, high = np.quantile(replicates, [tail, 1 - tail])
    return Interval(float(statistic(strata)), float(low), float(high), n, "stratified bootstrap")


def iqm_difference(
    first_per_setting: Sequence[ArrayLike],
    second_per_setting: Sequence[ArrayLike],
    paired: bool = True,
    reps: int = RESAMPLES,
    level: float = LEVEL,
    rng: np.random.Generator | int = SEED,
) -> Interval:
    """:func:`iqm` of all ``first`` scores minus that of all ``second`` scores, with the
    stratified bootstrap interval. ``paired``: setting i's two arrays are aligned by seed (same
    length) and a resampled seed brings both scores; otherwise each method's seeds are
    resampled on their own (rliable's independent bootstrap)."""

    count = len(first_per_setting)
    if count != len(second_per_setting):
        raise ValueError(f"{count} settings of first but {len(second_per_setting)} of second")
    if not paired:
        return stratified_bootstrap_ci(
            lambda s: iqm(s[:count]) - iqm(s[count:]),
            [*first_per_setting, *second_per_setting],
            reps,
            level,
            rng,
        )
    strata = [_by_seed(a, b) for a, b in zip(first_per_setting, second_per_setting, strict=True)]

    def difference(resampled: list[np.ndarray]) -> float:
        rows = np.concatenate(resampled)
        return iqm(rows[:, 0]) - iqm(rows[:, 1])

    return stratified_bootstrap_ci(difference, strata, reps, level, rng)


def _by_seed(first: ArrayLike, second: ArrayLike) -> np.ndarray:
    a, b = np.ravel(np.asarray(first, dtype=float)), np.ravel(np.asarray(second, dtype=float))
    if a.size != b.size:
        raise ValueError(f"paired settings need one score per seed of each: {a.size} ≠ {b.size}")
    return np.column_stack([a, b])


def probability_of_improvement_interval(
    x_per_setting: Sequence[ArrayLike],
    y_per_setting: Sequence[ArrayLike],
    reps: int = RESAMPLES,
    level: float = LEVEL,
    rng: np.random.Generator | int = SEED,
) -> Interval:
    """:func:`mean_probability_of_improvement` with the stratified bootstrap interval, each
    method's runs resampled on their own within each setting (as rliable does)."""
    count = len(x_per_setting)
    if count != len(y_per_setting):
        raise ValueError(f"{count} settings of x but {len(y_per_setting)} of y")
    return stratified_bootstrap_ci(
        lambda s: mean_probability_of_improvement(s[:count], s[count:]),
        [*x_per_setting, *y_per_setting],
        reps,
        level,
        rng,
    )
