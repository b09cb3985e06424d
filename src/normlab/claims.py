"""``normlab-claims RESULTS_DIR... [--out FILE] [--wandb]``: each claim of the source papers,
tested on run records alone, with a verdict that survives a rerun on another machine.

A claim names the runs that test it (by their recorded label, batch size and sampler) and an
effect: a difference between modes paired by seed, a difference of divergence rates, or a
change across batch sizes. Each setting that holds such runs (study, architecture on data set,
batch size and the other varied keys) gives the effect with its 95 % interval and a verdict
decided by the interval alone (:class:`Rule`):

- ``greater`` (the claimed effect is positive): *holds* if the interval lies above 0; *does not
  hold* if it lies below 0 or inside ±margin; else *inconclusive*;
- ``no_worse`` (no loss larger than the margin): *holds* if the interval lies above −margin;
  *does not hold* if it lies below −margin; else *inconclusive*;
- ``equivalent`` (no effect beyond the margin): *holds* if the interval lies inside ±margin;
  *does not hold* if it lies outside (above +margin or below −margin); else *inconclusive*.

A claim's verdict: *holds* if some settings hold and none does not; *does not hold* if some do
not and none holds; *mixed* if both occur (the table names the settings of each); *inconclusive*
if no setting decides; *not tested here* (with what it needs) without runs.

Only reported runs count: completed or diverged, not a study's learning-rate selection stage
(``stage: select``) nor one evaluated on the validation split. Diverged runs are left out of
accuracy effects (the table counts them) and counted in divergence rates.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from normlab import stats
from normlab.norms import baselines, batch, moving_average, online, renorm
from normlab.plots.runs import column_of, fmt, prepare_runs
from normlab.plots.tables import to_latex, to_markdown
from normlab.results import load_metrics, load_runs, load_traces

ACCURACY_MARGIN = 0.01  # 1 percentage point of accuracy
RATE_MARGIN = 0.25  # 25 percentage points of divergence rate
GROWTH_MARGIN = 0.1  # natural log of the bias norm's growth: ±10 %

HOLDS, FAILS, UNDECIDED, MIXED = "holds", "does not hold", "inconclusive", "mixed"
NOT_TESTED = "not tested here"

# keys that say in which setting runs were compared: always the study, model and data set, the
# others when they vary among the compared runs and every one of them sets them
ALWAYS = {"sweep": "study", "config.model.name": "model", "config.data.name": "data"}
VARIED = {
    "config.model.depth": "depth",
    "config.model.width": "width",
    "config.model.bias_before_norm": "bias before norm",
    "config.data.sampler": "sampler",
    "config.optim.name": "optimizer",
    "config.optim.lr": "lr",
    "config.momentum.kind": "momentum",
    "config.steps": "steps",
    "config.epochs": "epochs",
}


# ----------------------------------------------------------------------------- verdicts


@dataclass(frozen=True)
class Rule:
    """How an interval decides a setting's verdict (see the module docstring)."""

    kind: str  # "greater", "no_worse" or "equivalent"
    margin: float

    def verdict(self, effect: stats.Interval) -> str:
        if not effect.defined:
            return UNDECIDED
        low, high, m = effect.low, effect.high, self.margin
        if self.kind == "greater":
            if low > 0:
                return HOLDS
            return FAILS if high < 0 or (low >= -m and high <= m) else UNDECIDED
        if self.kind == "no_worse":
            return HOLDS if low > -m else FAILS if high < -m else UNDECIDED
        if -m <= low and high <= m:
            return HOLDS
        return FAILS if low > m or high < -m else UNDECIDED

    def text(self, scale: float, unit: str) -> str:
        margin = f"{self.margin * scale:g} {unit}"
        return {
            "greater": f"holds if the interval lies above 0; does not hold if below 0 or "
            f"within ±{margin}",
            "no_worse": f"holds if the interval lies above −{margin}; does not hold if below it",
            "equivalent": f"holds if the interval lies within ±{margin}; does not hold if "
            f"entirely outside",
        }[self.kind]


@dataclass(frozen=True)
class Finding:
    """One setting's evidence: where, the effect with its interval, the verdict, and counts."""

    study: str
    setting: str
    effect: stats.Interval
    verdict: str
    detail: str
    batch_size: int | None = None


def overall(findings: Sequence[Finding]) -> str:
    verdicts = {f.verdict for f in findings}
    if not findings:
        return NOT_TESTED
    if HOLDS in verdicts and FAILS in verdicts:
        return MIXED
    return HOLDS if HOLDS in verdicts else FAILS if FAILS in verdicts else UNDECIDED


def where_text(findings: Sequence[Finding]) -> str:
    """``holds: seed_question (mlp on mnist1d): batch 32; batch 128 — does not hold: ...``."""
    parts = []
    for verdict in (HOLDS, FAILS, UNDECIDED):
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


# ----------------------------------------------------------------------------- evidence


@dataclass
class Evidence:
    """The reported runs (prepared as the figures prepare them) and, loaded once when a claim
    asks, their logged rows and traces."""

    used: pd.DataFrame

    @classmethod
    def from_runs(cls, runs: pd.DataFrame) -> Evidence:
        used = prepare_runs(runs)
        if used.empty:
            return cls(used)
        selection = column_of(used, "stage").astype(str) == "select"
        validation = column_of(used, "eval_split").astype(str) == "validation"
        return cls(used.loc[~selection & ~validation].reset_index(drop=True))

    @cached_property
    def metrics(self) -> pd.DataFrame:
        return load_metrics(runs=self.used, config_keys=("run_dir",))

    @cached_property
    def traces(self) -> pd.DataFrame:
        return load_traces(self.used)

    def labelled(self, *labels: str) -> pd.DataFrame:
        return self.used.loc[self.used["mode"].isin(labels)] if not self.used.empty else self.used


def settings(
    runs: pd.DataFrame, by_batch: bool = True
) -> Iterator[tuple[str, str, int | None, pd.DataFrame]]:
    """``(study, setting, batch size, runs)`` per setting of ``runs``: per study, model and
    data set, the keys of :data:`VARIED` that vary there (and every run sets), and the batch
    size unless ``by_batch`` is false. A study's final-stage runs are compared at the learning
    rate each mode selected, so their lr does not split settings."""
    if runs.empty:
        return
    runs = runs.copy()
    final = column_of(runs, "stage").astype(str) == "final"
    if "config.optim.lr" in runs:
        runs["config.optim.lr"] = runs["config.optim.lr"].where(~final)
    studies = [k for k in ALWAYS if k in runs]
    batch = ["batch_size", "statistics_batch_size"] if by_batch else []
    for study_values, study in runs.groupby(studies, sort=True, dropna=False):
        keys = [k for k in VARIED if k in study and _varies(study[k])]
        split = [*keys, *batch]
        parts = study.groupby(split, sort=True, dropna=False) if split else [((), study)]
        for values, group in parts:
            named = dict(zip([*studies, *keys, *batch], [*study_values, *values], strict=True))
            yield (*_names(named, keys), named.get("batch_size"), group)


def _varies(values: pd.Series) -> bool:
    return bool(values.notna().all()) and values.astype(str).nunique() > 1


def _names(named: dict, keys: Sequence[str]) -> tuple[str, str]:
    model, data = named.get("config.model.name"), named.get("config.data.name")
    study = f"{fmt(named.get('sweep'))} ({fmt(model)} on {fmt(data)})"
    parts = []
    if "batch_size" in named:
        size, statistics = named["batch_size"], named["statistics_batch_size"]
        parts.append(
            f"batch {size}" + (f" (statistics over {statistics})" if statistics != size else "")
        )
    parts += [f"{VARIED[k]}={fmt(named[k])}" for k in keys if k in VARIED]
    return study, ", ".join(parts)


def per_seed(runs: pd.DataFrame, values: pd.Series) -> pd.Series:
    """``values`` of the non-diverged ``runs``, averaged per seed."""
    kept = ~runs["diverged"]
    numbers = pd.to_numeric(values[kept], errors="coerce")
    return numbers.groupby(runs.loc[kept, "seed"]).mean()


def _diverged(runs: pd.DataFrame, label: str) -> str:
    part = runs.loc[runs["mode"] == label]
    return f"{label}: {int(part['diverged'].sum())}/{len(part)} diverged"


# ----------------------------------------------------------------------------- effects


def paired(
    first: str,
    second: str,
    rule: Rule,
    keep: Callable[[pd.DataFrame], pd.Series] | None = None,
    metric: str = "val_acc_eval",
) -> Callable[[Evidence], list[Finding]]:
    """Final ``metric`` of ``first`` minus ``second``, paired by seed, per setting."""

    def test(evidence: Evidence) -> list[Finding]:
        runs = _kept(evidence.labelled(first, second), keep)
        findings = []
        for study, setting, size, group in settings(runs):
            if set(group["mode"]) != {first, second}:
                continue
            a, b = (group.loc[group["mode"] == m] for m in (first, second))
            effect = stats.paired_difference(
                per_seed(a, column_of(a, metric)), per_seed(b, column_of(b, metric))
            )
            detail = (
                f"{effect.n} seeds paired; {_diverged(group, first)}, {_diverged(group, second)}"
            )
            findings.append(Finding(study, setting, effect, rule.verdict(effect), detail, size))
        return findings

    return test


def rates(first: str, second: str, rule: Rule) -> Callable[[Evidence], list[Finding]]:
    """How often ``first`` diverged minus how often ``second`` did, per setting (Newcombe's
    interval from the two Wilson intervals)."""

    def test(evidence: Evidence) -> list[Finding]:
        findings = []
        for study, setting, size, group in settings(evidence.labelled(first, second)):
            if set(group["mode"]) != {first, second}:
                continue
            counts = [_count(group, m) for m in (first, second)]
            effect = stats.newcombe_interval(*counts[0], *counts[1])
            detail = "; ".join(
                f"{m}: {k}/{n} {stats.wilson_interval(k, n).text(100.0, 0)} %"
                for m, (k, n) in zip((first, second), counts, strict=True)
            )
            findings.append(Finding(study, setting, effect, rule.verdict(effect), detail, size))
        return findings

    return test


def _count(runs: pd.DataFrame, label: str) -> tuple[int, int]:
    part = runs.loc[runs["mode"] == label]
    return int(part["diverged"].sum()), len(part)


def bias_growth(first: str, second: str, rule: Rule) -> Callable[[Evidence], list[Finding]]:
    """Log growth of the pre-norm bias norm over each run (last finite over first positive
    value, from ``trace.csv`` or else the logged rows; diverged runs included), ``first``
    minus ``second``, paired by seed."""

    def test(evidence: Evidence) -> list[Finding]:
        runs = evidence.labelled(first, second)
        if runs.empty:
            return []
        growth = _log_growth(evidence, runs["run_dir"], "prenorm_bias_norm")
        runs = runs.assign(growth=runs["run_dir"].map(growth))
        runs = runs.loc[runs["growth"].notna()]
        findings = []
        for study, setting, size, group in settings(runs):
            if set(group["mode"]) != {first, second}:
                continue
            a, b = (group.loc[group["mode"] == m] for m in (first, second))
            effect = stats.paired_difference(_by_seed(a), _by_seed(b))
            detail = (
                f"{effect.n} seeds paired; {_diverged(group, first)}, {_diverged(group, second)}"
            )
            findings.append(Finding(study, setting, effect, rule.verdict(effect), detail, size))
        return findings

    return test


def _by_seed(runs: pd.DataFrame) -> pd.Series:
    return runs["growth"].groupby(runs["seed"]).mean()


def _log_growth(evidence: Evidence, run_dirs: pd.Series, column: str) -> pd.Series:
    rows = evidence.traces
    traced = set(rows["run_dir"]) if column in rows else set()
    logged = evidence.metrics
    parts = [rows.loc[rows["run_dir"].isin(traced)]] if traced else []
    if column in logged:
        parts.append(logged.loc[~logged["run_dir"].isin(traced)])
    if not parts:
        return pd.Series(dtype=float)
    every = pd.concat(parts, ignore_index=True).sort_values(["run_dir", "step"], kind="stable")
    every = every.loc[every["run_dir"].isin(set(run_dirs))]
    values = pd.to_numeric(every[column], errors="coerce")
    every = every.assign(value=values.where(np.isfinite(values) & (values > 0)))
    ends = every.dropna(subset=["value"]).groupby("run_dir")["value"].agg(["first", "last"])
    return np.log(ends["last"] / ends["first"])


def across_batch_sizes(
    label: str, rule: Rule, reference_first: bool
) -> Callable[[Evidence], list[Finding]]:
    """Final accuracy of ``label`` at its largest batch size in a setting against each smaller
    one (Welch interval: different runs share no pairing). ``reference_first``: the effect is
    acc(largest) − acc(smaller), else acc(smaller) − acc(largest)."""

    def test(evidence: Evidence) -> list[Finding]:
        findings = []
        for study, setting, _, group in settings(evidence.labelled(label), by_batch=False):
            sizes = sorted(set(group["batch_size"]))
            if len(sizes) < 2:
                continue
            kept = group.loc[~group["diverged"]]
            accuracy = {s: column_of(kept, "val_acc_eval")[kept["batch_size"] == s] for s in sizes}
            reference = sizes[-1]
            for size in sizes[:-1]:
                pair = (accuracy[reference], accuracy[size])
                effect = stats.welch_interval(*(pair if reference_first else pair[::-1]))
                where = ", ".join(p for p in (setting, f"batch {size} vs {reference}") if p)
                detail = f"{len(pair[1])} and {len(pair[0])} seeds (batch {size}, {reference})"
                findings.append(Finding(study, where, effect, rule.verdict(effect), detail, size))
        return findings

    return test


def precise_gain(labels: Sequence[str], rule: Rule, sizes: Callable[[int], bool]):
    """``val_acc_precise − val_acc_eval`` of the same run (precise against EMA population
    statistics, same weights), over seeds, per setting whose statistics batch size ``sizes``
    accepts."""

    def test(evidence: Evidence) -> list[Finding]:
        runs = evidence.labelled(*labels)
        if runs.empty:
            return []
        runs = runs.loc[runs["statistics_batch_size"].map(sizes)]
        gain = pd.to_numeric(column_of(runs, "val_acc_precise"), errors="coerce") - pd.to_numeric(
            column_of(runs, "val_acc_eval"), errors="coerce"
        )
        asked = column_of(runs, "config.eval.precise_bn").fillna(False).astype(bool)
        runs = runs.assign(gain=gain).loc[gain.notna() | (runs["diverged"] & asked)]
        findings = []
        for study, setting, size, group in settings(runs):
            for label, part in group.groupby("mode", sort=True):
                effect = stats.mean_interval(per_seed(part, part["gain"]))
                where = f"{setting} [{label}]"
                detail = f"{effect.n} seeds; {_diverged(part, label)}"
                findings.append(Finding(study, where, effect, rule.verdict(effect), detail, size))
        return findings

    return test


def _kept(runs: pd.DataFrame, keep: Callable[[pd.DataFrame], pd.Series] | None) -> pd.DataFrame:
    return runs.loc[keep(runs)] if keep is not None and not runs.empty else runs


def _iid(runs: pd.DataFrame) -> pd.Series:
    return runs["sampler"] != "non_iid"


def _non_iid(runs: pd.DataFrame) -> pd.Series:
    return runs["sampler"] == "non_iid"


# ----------------------------------------------------------------------------- the claims


@dataclass(frozen=True)
class Claim:
    key: str
    source: str
    statement: str
    effect: str
    rule: Rule
    needs: str
    test: Callable[[Evidence], list[Finding]] = field(repr=False)
    scale: float = 100.0
    unit: str = "pp"


BN = "Ioffe & Szegedy 2015 (arXiv 1502.03167)"
BRN = "Ioffe 2017, Batch Renormalization (arXiv 1702.03275)"
GN = "Wu & He 2018, Group Normalization (arXiv 1803.08494)"
ONLINE = "Chiley et al. 2019, Online Normalization (arXiv 1905.05894)"
RETHINKING = "Wu & Johnson 2021, Rethinking “Batch” in BatchNorm (arXiv 2105.07576)"
# the labels the claims are about, as each mode's own module draws them
BATCH, GHOST = (style.label for style in batch.MODE.styles)
MA, MA_GRAD = (style.label for style in moving_average.MODE.styles)
RENORM = renorm.MODE.styles[0].label
GROUP = baselines.GROUP.styles[0].label
ONLINE_NORM = online.MODE.styles[0].label

GREATER = Rule("greater", ACCURACY_MARGIN)
CLAIMS: tuple[Claim, ...] = (
    Claim(
        "seed_question",
        f"{BN}, §2–3",
        "Training normalizes with mini-batch statistics because that trains better than "
        "normalizing with the moving averages, at every batch size",
        "acc(batch) − acc(moving_average), paired by seed, per batch size",
        GREATER,
        "runs labelled batch and moving_average in one setting",
        paired(BATCH, MA, GREATER),
    ),
    Claim(
        "bn_blowup",
        f"{BN}, §2",
        "Normalizing with statistics the gradient step does not see makes the model blow up",
        "divergence rate of moving_average − rate of batch (Newcombe interval from Wilson)",
        Rule("greater", RATE_MARGIN),
        "runs labelled moving_average and batch in one setting",
        rates(MA, BATCH, Rule("greater", RATE_MARGIN)),
    ),
    Claim(
        "bn_bias_growth",
        f"{BN}, §2",
        "With the normalization outside the gradient step, the bias it cancels grows without bound",
        "ln growth of the pre-norm bias norm over a run, moving_average − batch, paired by seed",
        Rule("greater", GROWTH_MARGIN),
        "runs labelled moving_average and batch that log prenorm_bias_norm "
        "(model.bias_before_norm=true)",
        bias_growth(MA, BATCH, Rule("greater", GROWTH_MARGIN)),
        scale=1.0,
        unit="ln",
    ),
    Claim(
        "brn_backprop",
        f"{BRN}, §2",
        "Backpropagating through the batch moments is what prevents the blow-up",
        "divergence rate of moving_average − rate of moving_average (grad through batch)",
        Rule("greater", RATE_MARGIN),
        "runs labelled moving_average and moving_average (grad through batch) in one setting",
        rates(MA, MA_GRAD, Rule("greater", RATE_MARGIN)),
    ),
    Claim(
        "brn_large_batch",
        f"{BRN}, Fig. 1",
        "With i.i.d. batches of 32 or more, Batch Renormalization loses nothing against batchnorm",
        "acc(renorm) − acc(batch), paired by seed, i.i.d. batches of ≥ 32",
        Rule("no_worse", ACCURACY_MARGIN),
        "i.i.d. runs labelled renorm and batch at batch size ≥ 32",
        paired(
            RENORM,
            BATCH,
            Rule("no_worse", ACCURACY_MARGIN),
            lambda r: _iid(r) & (r["statistics_batch_size"] >= 32),
        ),
    ),
    Claim(
        "brn_micro_batch",
        f"{BRN}, Fig. 2",
        "With micro-batches of 4, Batch Renormalization beats batchnorm",
        "acc(renorm) − acc(batch), paired by seed, i.i.d. batches of 4",
        GREATER,
        "i.i.d. runs labelled renorm and batch at batch size 4",
        paired(RENORM, BATCH, GREATER, lambda r: _iid(r) & (r["statistics_batch_size"] == 4)),
    ),
    Claim(
        "brn_non_iid",
        f"{BRN}, Fig. 3",
        "With non-i.i.d. batches, Batch Renormalization beats batchnorm",
        "acc(renorm) − acc(batch), paired by seed, data.sampler=non_iid",
        GREATER,
        "runs labelled renorm and batch with data.sampler=non_iid",
        paired(RENORM, BATCH, GREATER, _non_iid),
    ),
    Claim(
        "gn_bn_degrades",
        f"{GN}, Fig. 1",
        "Batchnorm's error grows as the batch shrinks",
        "acc(batch) at the largest batch size − at each smaller one (Welch)",
        GREATER,
        "runs labelled batch at two or more batch sizes in one setting",
        across_batch_sizes(BATCH, GREATER, reference_first=True),
    ),
    Claim(
        "gn_flat",
        f"{GN}, Fig. 1",
        "GroupNorm's error stays flat as the batch shrinks",
        "acc(group) at each smaller batch size − at the largest (Welch)",
        Rule("equivalent", ACCURACY_MARGIN),
        "runs labelled group at two or more batch sizes in one setting",
        across_batch_sizes(GROUP, Rule("equivalent", ACCURACY_MARGIN), reference_first=False),
    ),
    Claim(
        "online_flat",
        ONLINE,
        "Online Normalization's accuracy does not depend on the batch size",
        "acc(online) at each smaller batch size − at the largest (Welch)",
        Rule("equivalent", ACCURACY_MARGIN),
        "runs labelled online at two or more batch sizes in one setting",
        across_batch_sizes(ONLINE_NORM, Rule("equivalent", ACCURACY_MARGIN), reference_first=False),
    ),
    Claim(
        "rethinking_small",
        f"{RETHINKING}, Table 2",
        "At small normalization batches the EMA is a poor population estimate: precise "
        "statistics recover part of the loss",
        "acc(precise statistics) − acc(EMA) of the same runs, statistics over ≤ 8 examples",
        GREATER,
        "runs labelled batch or batch (ghost) that log val_acc_precise, statistics batch ≤ 8",
        precise_gain((BATCH, GHOST), GREATER, lambda size: size <= 8),
    ),
    Claim(
        "rethinking_large",
        f"{RETHINKING}, Table 2",
        "At normalization batches of 32 or more the EMA is as good as precise statistics",
        "acc(precise statistics) − acc(EMA) of the same runs, statistics over ≥ 32 examples",
        Rule("equivalent", ACCURACY_MARGIN),
        "runs labelled batch or batch (ghost) that log val_acc_precise, statistics batch ≥ 32",
        precise_gain(
            (BATCH, GHOST),
            Rule("equivalent", ACCURACY_MARGIN),
            lambda size: size >= 32,
        ),
    ),
)


@dataclass(frozen=True)
class Result:
    claim: Claim
    findings: tuple[Finding, ...]

    @property
    def verdict(self) -> str:
        return overall(self.findings)


def evaluate(runs: pd.DataFrame, claims: Sequence[Claim] = CLAIMS) -> list[Result]:
    """Every claim's findings on ``runs`` (a :func:`~normlab.results.load_runs` frame)."""
    evidence = Evidence.from_runs(runs)
    return [Result(claim, tuple(claim.test(evidence))) for claim in claims]


# ----------------------------------------------------------------------------- tables


def caption() -> str:
    return (
        "Claims of the source papers tested on these run records. Effects carry 95 % "
        f"intervals ({stats.describe()} of paired per-seed differences; Welch t across batch "
        "sizes; Newcombe's interval from Wilson intervals for divergence rates). A setting's "
        "verdict comes from its interval alone: 'greater' claims hold if it lies above 0 and do "
        "not hold if it lies below 0 or within the margin; 'no worse' claims hold if it lies "
        "above −margin and do not hold if below; 'equivalence' claims hold if it lies within "
        "±margin and do not hold if entirely outside; otherwise inconclusive. A claim holds if "
        "some settings hold and none does not, does not hold if the reverse, is mixed if both "
        "occur. Only completed or diverged reported runs count (not lr-selection runs); diverged "
        "runs are left out of accuracy effects and counted in rates."
    )


def verdict_table(results: Sequence[Result]) -> pd.DataFrame:
    rows = []
    for result in results:
        claim = result.claim
        verdict = result.verdict
        rows.append(
            {
                "claim": claim.key,
                "source": claim.source,
                "statement": claim.statement,
                "tested in": "; ".join(dict.fromkeys(f.study for f in result.findings)) or "–",
                "effect": claim.effect,
                "rule": claim.rule.text(claim.scale, claim.unit),
                "verdict": verdict,
                "where": where_text(result.findings) or f"needs: {claim.needs}",
            }
        )
    return pd.DataFrame(rows)


def evidence_table(results: Sequence[Result]) -> pd.DataFrame:
    rows = []
    for result in results:
        claim = result.claim
        for finding in result.findings:
            rows.append(
                {
                    "claim": claim.key,
                    "study": finding.study,
                    "setting": finding.setting,
                    "effect": f"{finding.effect.text(claim.scale, 2 if claim.unit == 'ln' else 1)} "
                    f"{claim.unit}",
                    "estimate": finding.effect.estimate,
                    "low": finding.effect.low,
                    "high": finding.effect.high,
                    "verdict": finding.verdict,
                    "counts": finding.detail,
                }
            )
    columns = [
        "claim",
        "study",
        "setting",
        "effect",
        "estimate",
        "low",
        "high",
        "verdict",
        "counts",
    ]
    return pd.DataFrame(rows, columns=columns)


def render(results: Sequence[Result]) -> tuple[str, str]:
    """The Markdown and LaTeX of both tables: verdicts, then the evidence per setting."""
    verdicts = verdict_table(results)
    evidence = evidence_table(results).drop(columns=["estimate", "low", "high"])
    markdown = (
        to_markdown(verdicts, len(verdicts.columns), caption())
        + "\n"
        + to_markdown(evidence, 3, "Evidence per setting (effect [95 % interval]).")
    )
    latex = (
        to_latex(verdicts, len(verdicts.columns), caption())
        + "\n"
        + to_latex(evidence, 3, "Evidence per setting")
    )
    return markdown, latex


def write_claims(results: Sequence[Result], out: Path) -> list[Path]:
    """``out`` (Markdown), the same stem ``.tex`` and ``.csv`` (the evidence, numbers), and
    the papers-beside-the-harness table as ``<stem>_papers.md/.tex/.csv``."""
    from normlab import papers

    out.parent.mkdir(parents=True, exist_ok=True)
    markdown, latex = render(results)
    paths = [out, out.with_suffix(".tex"), out.with_suffix(".csv")]
    paths[0].write_text(markdown, encoding="utf-8")
    paths[1].write_text(latex, encoding="utf-8")
    evidence_table(results).to_csv(paths[2], index=False, float_format="%.6g", lineterminator="\n")
    return paths + papers.write_beside(results, out.with_name(f"{out.stem}_papers"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="normlab-claims",
        description="Verdicts on the papers' claims from normlab run records.",
    )
    parser.add_argument("results", nargs="+", type=Path, help="results directories")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("results/figures/claims.md"),
        help="the Markdown table (.tex, .csv and *_papers.* beside it; "
        "default: results/figures/claims.md)",
    )
    parser.add_argument(
        "--wandb", action="store_true", help="also log the tables to a wandb summary run"
    )
    parser.add_argument("--interval", choices=stats.METHODS, default="t")
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.results if not p.exists()]
    if missing:
        print(f"normlab-claims: no such directory: {', '.join(missing)}", file=sys.stderr)
        return 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        runs = load_runs(*args.results)
    if runs.empty:
        print(f"normlab-claims: no run records under {', '.join(map(str, args.results))}",
              file=sys.stderr)  # fmt: skip
        return 1
    with stats.interval_method(args.interval):
        results = evaluate(runs)
        written = write_claims(results, args.out)
        if args.wandb:
            _log(runs, results, written, args.results[0])
    for result in results:
        print(f"{result.claim.key}: {result.verdict}")
    print(f"wrote {len(written)} files:")
    for path in written:
        print(f"  {path}")
    return 0


def _log(runs: pd.DataFrame, results: Sequence[Result], written: list[Path], root: Path) -> None:
    from normlab import dashboard, papers

    tables = {
        "claims": verdict_table(results),
        "claims_evidence": evidence_table(results),
        "papers": papers.beside_table(results),
    }
    run_dir = dashboard.log_summary(runs, "claims", [], tables, root)
    print(f"logged {len(tables)} tables to wandb: {run_dir}")
