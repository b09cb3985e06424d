"""From evidence to verdicts, through :mod:`normlab.stats`:

- each setting's two one-sided p-values (:meth:`.rules.Rule.p_holds`, :meth:`~.rules.Rule.
  p_fails`), from the test that goes with its interval;
- Holm's adjustment within a claim: the family is the claim's testable settings, one family for
  the *holds* hypotheses and one for the *does not hold* ones; a setting is decided when its
  adjusted p-value is at most :data:`normlab.stats.ONE_SIDED_ALPHA` (a lone setting decides as
  its 95 % interval does);
- one line per claim across its settings: the probability of improvement (rliable) and the
  difference of interquartile means, each with a stratified-bootstrap 95 % interval that
  resamples seeds within each setting.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from normlab import stats
from normlab.claims.catalogue import CLAIMS, Claim
from normlab.claims.evidence import Comparison, Evidence, compare
from normlab.claims.rules import decide, overall

SUMMARY_RESAMPLES = 2_000  # bootstrap resamples of the across-settings line


@dataclass(frozen=True)
class Finding:
    """One setting's evidence with its decision: the effect with its 95 % interval, the raw and
    Holm-adjusted p-values of the *holds* and *does not hold* tests, the verdict, the counts."""

    study: str
    setting: str
    effect: stats.Interval
    verdict: str
    detail: str
    batch_size: int | None = None
    p_holds: float = math.nan
    p_holds_adjusted: float = math.nan
    p_fails: float = math.nan
    p_fails_adjusted: float = math.nan


@dataclass(frozen=True)
class Summary:
    """A claim across its settings: how many, the probability that a run of the claim's first
    side beats one of its second in the same setting, and the IQM difference (first − second)."""

    settings: int
    runs: int  # scores on both sides (a seed's runs of one label average into one score)
    improvement: stats.Interval
    iqm_difference: stats.Interval


NO_SUMMARY = Summary(0, 0, stats.NO_VALUES, stats.NO_VALUES)


@dataclass(frozen=True)
class Result:
    claim: Claim
    findings: tuple[Finding, ...]
    summary: Summary = NO_SUMMARY

    @property
    def verdict(self) -> str:
        return overall(self.findings)


def decide_all(claim: Claim, comparisons: Sequence[Comparison]) -> list[Finding]:
    """Each comparison's verdict, Holm-adjusted over the claim's settings."""
    rule = claim.rule
    holds = np.array([rule.p_holds(c.p_value) if c.testable else math.nan for c in comparisons])
    fails = np.array([rule.p_fails(c.p_value) if c.testable else math.nan for c in comparisons])
    holds_adjusted, fails_adjusted = stats.holm(holds), stats.holm(fails)
    holds_rejected, fails_rejected = stats.holm_rejects(holds), stats.holm_rejects(fails)
    return [
        Finding(
            c.study,
            c.setting,
            c.effect,
            decide(bool(holds_rejected[i]), bool(fails_rejected[i]), c.testable),
            c.detail,
            c.batch_size,
            float(holds[i]),
            float(holds_adjusted[i]),
            float(fails[i]),
            float(fails_adjusted[i]),
        )
        for i, c in enumerate(comparisons)
    ]


def summarize(comparisons: Sequence[Comparison], reps: int = SUMMARY_RESAMPLES) -> Summary:
    """:class:`Summary` over the settings with scores on both sides (strata of the bootstrap)."""
    used = [c for c in comparisons if len(c.first) and len(c.second)]
    if not used:
        return NO_SUMMARY
    first, second = [c.first for c in used], [c.second for c in used]
    paired = all(c.paired for c in used)
    return Summary(
        len(used),
        sum(len(c.first) + len(c.second) for c in used),
        stats.probability_of_improvement_interval(first, second, reps=reps),
        stats.iqm_difference(first, second, paired=paired, reps=reps),
    )


def evaluate(runs: pd.DataFrame, claims: Sequence[Claim] = CLAIMS) -> list[Result]:
    """Every claim's findings and summary on ``runs`` (a :func:`~normlab.results.load_runs`
    frame)."""
    evidence = Evidence.from_runs(runs)
    results = []
    for claim in claims:
        comparisons = compare(claim, evidence)
        results.append(Result(claim, tuple(decide_all(claim, comparisons)), summarize(comparisons)))
    return results
