"""How a claim's settings are decided, and how they add up to the claim's verdict.

A setting's effect is tested one-sidedly against the claim's :class:`Rule`: the hypothesis
whose rejection makes the setting *hold*, and the one whose rejection makes it *not hold*. With
one setting this decides as the 95 % interval does (its low bound lies above ``c`` exactly when
the one-sided p-value of "the effect exceeds ``c``" is below 2.5 %,
:data:`normlab.stats.ONE_SIDED_ALPHA`); with several, the p-values are Holm-adjusted within
the claim first (:mod:`.inference`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

HOLDS, FAILS, UNDECIDED, MIXED = "holds", "does not hold", "inconclusive", "mixed"
NOT_TESTABLE = "not testable"  # runs of both sides, but nothing to compare (no interval)
NOT_TESTED = "not tested here"  # no runs of the claim at all

PValue = Callable[[float, str], float]  # (null, alternative) -> one-sided p-value


@dataclass(frozen=True)
class Rule:
    """What decides a setting, in the effect's own units:

    - ``greater`` (the claimed effect is positive): *holds* if the effect is shown above 0;
      *does not hold* if shown below 0 or inside ±margin (both one-sided tests reject);
    - ``no_worse`` (no loss larger than the margin): *holds* if shown above −margin; *does not
      hold* if shown below −margin;
    - ``equivalent`` (no effect beyond the margin): *holds* if shown inside ±margin; *does not
      hold* if shown above +margin or below −margin.

    An interval decides alike: *holds* if it lies above 0 / above −margin / inside ±margin.
    """

    kind: str  # "greater", "no_worse" or "equivalent"
    margin: float

    def p_holds(self, p: PValue) -> float:
        """The p-value whose rejection makes the setting hold."""
        m = self.margin
        if self.kind == "greater":
            return p(0.0, "greater")
        if self.kind == "no_worse":
            return p(-m, "greater")
        return _both(p(-m, "greater"), p(m, "less"))

    def p_fails(self, p: PValue) -> float:
        """The p-value whose rejection makes the setting not hold."""
        m = self.margin
        if self.kind == "greater":
            return _either(p(0.0, "less"), _both(p(-m, "greater"), p(m, "less")))
        if self.kind == "no_worse":
            return p(-m, "less")
        return _either(p(m, "greater"), p(-m, "less"))

    def text(self, scale: float, unit: str) -> str:
        margin = f"{self.margin * scale:g} {unit}"
        return {
            "greater": f"holds if the interval lies above 0; does not hold if below 0 or "
            f"within ±{margin}",
            "no_worse": f"holds if the interval lies above −{margin}; does not hold if below it",
            "equivalent": f"holds if the interval lies within ±{margin}; does not hold if "
            f"entirely outside",
        }[self.kind]


def _both(a: float, b: float) -> float:
    """Both one-sided tests must reject (an intersection-union test): the larger p-value."""
    return max(a, b) if not (math.isnan(a) or math.isnan(b)) else math.nan


def _either(a: float, b: float) -> float:
    """Either route decides (disjoint regions of the interval): the smaller p-value."""
    return min(a, b) if not (math.isnan(a) or math.isnan(b)) else math.nan


def decide(holds_rejected: bool, fails_rejected: bool, testable: bool) -> str:
    if not testable:
        return NOT_TESTABLE
    if holds_rejected:
        return HOLDS
    return FAILS if fails_rejected else UNDECIDED


class Decided(Protocol):
    study: str
    setting: str
    verdict: str


def overall(findings: Sequence[Decided]) -> str:
    """*holds* if some settings hold and none does not, *does not hold* the reverse, *mixed* if
    both occur; else *inconclusive* if some setting was tested, *not testable* if none could be,
    *not tested here* without settings."""
    if not findings:
        return NOT_TESTED
    verdicts = {f.verdict for f in findings}
    if HOLDS in verdicts and FAILS in verdicts:
        return MIXED
    for verdict in (HOLDS, FAILS, UNDECIDED):
        if verdict in verdicts:
            return verdict
    return NOT_TESTABLE


def where_text(findings: Sequence[Decided]) -> str:
    """``holds at seed_question (mlp on mnist1d): batch 32, batch 128 — does not hold at ...``."""
    parts = []
    for verdict in (HOLDS, FAILS, UNDECIDED, NOT_TESTABLE):
        chosen = [f for f in findings if f.verdict == verdict]
        if not chosen:
            continue
        studies = dict.fromkeys(f.study for f in chosen)
        places = "; ".join(
            f"{study}: " + ", ".join(f.setting or "all" for f in chosen if f.study == study)
            for study in studies
        )
        parts.append(f"{verdict} at {places}")
    return " — ".join(parts)
