"""``normlab-claims``: each claim of the source papers, tested on run records alone, with a
verdict that survives a rerun on another machine. Imports neither torch nor the figures.

- :mod:`.catalogue`: the claims as data (statement, source, compared labels, effect, rule and
  margin, the runs each applies to);
- :mod:`.evidence`: the reported runs, the settings they are compared in, and each setting's
  effect with its 95 % interval (diverged runs count as failures, at chance accuracy);
- :mod:`.rules`: what decides a setting and how settings add up to a claim's verdict;
- :mod:`.inference`: the p-values, Holm's adjustment within each claim, and the line across
  settings (probability of improvement, IQM difference) through :mod:`normlab.stats`;
- :mod:`.render`: the tables; :mod:`.cli`: the command.
"""

from normlab.claims.catalogue import CLAIMS, Claim, Where
from normlab.claims.cli import main
from normlab.claims.evidence import Comparison, Evidence
from normlab.claims.inference import Finding, Result, Summary, evaluate
from normlab.claims.render import evidence_table, render, summary_table, verdict_table, write_claims
from normlab.claims.rules import (
    FAILS,
    HOLDS,
    MIXED,
    NOT_TESTABLE,
    NOT_TESTED,
    UNDECIDED,
    Rule,
    overall,
    where_text,
)

__all__ = [
    "CLAIMS",
    "FAILS",
    "HOLDS",
    "MIXED",
    "NOT_TESTABLE",
    "NOT_TESTED",
    "UNDECIDED",
    "Claim",
    "Comparison",
    "Evidence",
    "Finding",
    "Result",
    "Rule",
    "Summary",
    "Where",
    "evaluate",
    "evidence_table",
    "main",
    "overall",
    "render",
    "summary_table",
    "verdict_table",
    "where_text",
    "write_claims",
]
