"""The claims as tables: the verdicts, the evidence per setting, and each claim across its
settings, in Markdown and LaTeX (:mod:`normlab.tables`), the numbers as CSV."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from normlab import stats
from normlab.claims.inference import SUMMARY_RESAMPLES, Result
from normlab.claims.rules import where_text
from normlab.tables import to_latex, to_markdown


def caption() -> str:
    return (
        "Claims of the source papers tested on these run records. Effects carry 95 % "
        f"intervals ({stats.describe()} of paired per-seed differences; Welch t across batch "
        "sizes; Newcombe's interval from Wilson intervals for divergence rates). Every finished "
        "run counts: a diverged run enters accuracy effects at chance accuracy (1/classes, 0.1 "
        "where the record does not say) and divergence rates as a divergence. A setting is "
        "decided by one-sided tests that go with its interval, Holm-adjusted over the claim's "
        "settings (at 2.5 % each side; a lone setting decides as its interval): 'greater' "
        "claims hold if the effect is shown above 0 and do not hold if shown below 0 or within "
        "the margin; 'no worse' claims hold if shown above −margin and do not hold if below; "
        "'equivalence' claims hold if shown within ±margin and do not hold if outside; "
        "otherwise inconclusive; 'not testable' where the runs give nothing to compare (no "
        "interval). A claim holds if some settings hold and none does not, does not hold if the "
        "reverse, is mixed if both occur. Only reported runs count (not lr-selection runs)."
    )


EVIDENCE_CAPTION = (
    "Evidence per setting: effect [95 % interval]; one-sided p-values of the tests that make "
    "the setting hold and not hold, raw → Holm-adjusted within the claim."
)


def summary_caption() -> str:
    return (
        "Each claim across its settings: the probability of improvement (a run of the claim's "
        "first side beating one of its second in the same setting, ties half; rliable) and the "
        "difference of interquartile means of the per-seed scores (diverged runs at chance "
        "accuracy; for rates a run scores 1 if it diverged), each with a 95 % stratified "
        f"percentile-bootstrap interval ({SUMMARY_RESAMPLES} resamples of the seeds within each "
        "setting)."
    )


def verdict_table(results: Sequence[Result]) -> pd.DataFrame:
    rows = []
    for result in results:
        claim = result.claim
        rows.append(
            {
                "claim": claim.key,
                "source": claim.source,
                "statement": claim.statement,
                "tested in": "; ".join(dict.fromkeys(f.study for f in result.findings)) or "–",
                "effect": claim.effect,
                "rule": claim.rule.text(claim.scale, claim.unit),
                "verdict": result.verdict,
                "where": where_text(result.findings) or f"needs: {claim.needs}",
            }
        )
    return pd.DataFrame(rows)


EVIDENCE_COLUMNS = [
    "claim",
    "study",
    "setting",
    "effect",
    "verdict",
    "p holds (raw → Holm)",
    "p does not hold (raw → Holm)",
    "counts",
    "estimate",
    "low",
    "high",
    "p_holds",
    "p_holds_holm",
    "p_fails",
    "p_fails_holm",
]
NUMBERS = EVIDENCE_COLUMNS[-7:]


def evidence_table(results: Sequence[Result]) -> pd.DataFrame:
    rows = []
    for result in results:
        claim = result.claim
        digits = 2 if claim.unit == "ln" else 1
        for f in result.findings:
            rows.append(
                {
                    "claim": claim.key,
                    "study": f.study,
                    "setting": f.setting,
                    "effect": f"{f.effect.text(claim.scale, digits)} {claim.unit}",
                    "verdict": f.verdict,
                    "p holds (raw → Holm)": _p_pair(f.p_holds, f.p_holds_adjusted),
                    "p does not hold (raw → Holm)": _p_pair(f.p_fails, f.p_fails_adjusted),
                    "counts": f.detail,
                    "estimate": f.effect.estimate,
                    "low": f.effect.low,
                    "high": f.effect.high,
                    "p_holds": f.p_holds,
                    "p_holds_holm": f.p_holds_adjusted,
                    "p_fails": f.p_fails,
                    "p_fails_holm": f.p_fails_adjusted,
                }
            )
    return pd.DataFrame(rows, columns=EVIDENCE_COLUMNS)


def _p(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.2g}"


def _p_pair(raw: float, adjusted: float) -> str:
    return "–" if math.isnan(raw) else f"{_p(raw)} → {_p(adjusted)}"


SUMMARY_COLUMNS = [
    "claim",
    "verdict",
    "settings",
    "runs",
    "P(improvement) [95 % CI]",
    "IQM difference [95 % CI]",
    "improvement",
    "improvement_low",
    "improvement_high",
    "iqm_difference",
    "iqm_difference_low",
    "iqm_difference_high",
]


def summary_table(results: Sequence[Result]) -> pd.DataFrame:
    """One line per claim across its settings (:class:`~.inference.Summary`)."""
    rows = []
    for result in results:
        claim, s = result.claim, result.summary
        digits = 2 if claim.unit == "ln" else 1
        rows.append(
            {
                "claim": claim.key,
                "verdict": result.verdict,
                "settings": s.settings,
                "runs": s.runs,
                "P(improvement) [95 % CI]": s.improvement.text(1.0, 2),
                "IQM difference [95 % CI]": (
                    f"{s.iqm_difference.text(claim.scale, digits)} {claim.unit}"
                    if s.settings
                    else "–"
                ),
                "improvement": s.improvement.estimate,
                "improvement_low": s.improvement.low,
                "improvement_high": s.improvement.high,
                "iqm_difference": s.iqm_difference.estimate,
                "iqm_difference_low": s.iqm_difference.low,
                "iqm_difference_high": s.iqm_difference.high,
            }
        )
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def render(results: Sequence[Result]) -> tuple[str, str]:
    """The Markdown and LaTeX of the three tables: verdicts, each claim across its settings,
    and the evidence per setting."""
    verdicts = verdict_table(results)
    across = summary_table(results).iloc[:, :6]
    evidence = evidence_table(results).drop(columns=NUMBERS)
    tables = (
        (verdicts, len(verdicts.columns), caption()),
        (across, 2, summary_caption()),
        (evidence, 3, EVIDENCE_CAPTION),
    )
    markdown = "\n".join(to_markdown(t, left, text) for t, left, text in tables)
    latex = "\n".join(to_latex(t, left, text) for t, left, text in tables)
    return markdown, latex


def write_claims(results: Sequence[Result], out: Path) -> list[Path]:
    """``out`` (Markdown), the same stem ``.tex`` and ``.csv`` (the evidence, numbers),
    ``<stem>_summary.csv`` (each claim across its settings), and the papers-beside-the-harness
    table as ``<stem>_papers.md/.tex/.csv``."""
    from normlab import papers

    out.parent.mkdir(parents=True, exist_ok=True)
    markdown, latex = render(results)
    paths = [out, out.with_suffix(".tex"), out.with_suffix(".csv")]
    paths.append(out.with_name(f"{out.stem}_summary.csv"))
    paths[0].write_text(markdown, encoding="utf-8")
    paths[1].write_text(latex, encoding="utf-8")
    csv = {"index": False, "float_format": "%.6g", "lineterminator": "\n"}
    evidence_table(results).to_csv(paths[2], **csv)
    summary_table(results).to_csv(paths[3], **csv)
    return paths + papers.write_beside(results, out.with_name(f"{out.stem}_papers"))
