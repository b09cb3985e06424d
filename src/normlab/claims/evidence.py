"""The evidence a claim is decided on: the reported runs, the settings they were compared in,
and per setting the effect with its 95 % interval, the p-values that go with that interval, and
the per-seed scores the across-settings summary resamples.

Every run that finished counts. A diverged run enters accuracy effects as a failure, at chance
accuracy (``1 / num_classes`` where the record says how many classes, else 0.1), both its
accuracies alike (so its precise-statistics gain is 0); it counts in divergence rates, and its
bias growth is measured up to its last finite value. Only reported runs count: completed or
diverged, not a study's learning-rate selection stage (``stage: select``) nor one evaluated on the
validation split.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd

from normlab import stats
from normlab.claims.catalogue import ACCURACY_MARGIN, Claim, Where
from normlab.claims.rules import PValue
from normlab.grouping import chance, column_of, fmt, prepare_runs
from normlab.grouping import scored_accuracy as accuracy
from normlab.records import SETTING_KEYS
from normlab.results import load_metrics, load_traces

# Runs are always compared within one study, model and data set, and at one batch size and
# statistics batch size; the other setting keys split them where they vary (and every run sets
# them). ``statistics_sub_batch`` is the statistics batch size again, already split on.
ALWAYS = ("sweep", "config.model.name", "config.data.name")
VARIED = {k: v for k, v in SETTING_KEYS.items() if k not in ALWAYS and k != "statistics_sub_batch"}
SCHEDULE_KEY = "config.momentum.kind"  # the momentum schedule a claim may fix per label


@dataclass(frozen=True)
class Comparison:
    """One setting's effect: where, the estimate with its 95 % interval, the counts, how to test
    it (``p_value(null, alternative)``, None when there is nothing to test), and the per-seed
    scores in the claim's direction (``first`` over ``second``; aligned by seed if ``paired``)."""

    study: str
    setting: str
    effect: stats.Interval
    detail: str
    batch_size: int | None
    p_value: PValue | None
    first: np.ndarray = field(repr=False)
    second: np.ndarray = field(repr=False)
    paired: bool = True

    @property
    def testable(self) -> bool:
        return self.effect.defined and self.p_value is not None


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


def compare(claim: Claim, evidence: Evidence) -> list[Comparison]:
    """The claim's comparisons, one per setting that holds runs of its labels."""
    return BUILDERS[claim.evidence](claim, evidence)


# ----------------------------------------------------------------------------- settings


def settings(
    runs: pd.DataFrame, by_batch: bool = True, compared: tuple[str, ...] = ()
) -> Iterator[tuple[str, str, int | None, pd.DataFrame]]:
    """``(study, setting, batch size, runs)`` per setting of ``runs``: per study, model and
    data set, the keys of :data:`VARIED` that vary there (and every run sets) but those
    ``compared``, and the batch size unless ``by_batch`` is false. A study's final-stage runs
    are compared at the learning rate each mode selected, so their lr does not split
    settings."""
    if runs.empty:
        return
    runs = runs.copy()
    final = column_of(runs, "stage").astype(str) == "final"
    if "config.optim.lr" in runs:
        runs["config.optim.lr"] = runs["config.optim.lr"].where(~final)
    studies = [k for k in ALWAYS if k in runs]
    batch = ["batch_size", "statistics_batch_size"] if by_batch else []
    for study_values, study in runs.groupby(studies, sort=True, dropna=False):
        keys = [k for k in VARIED if k in study and k not in compared and _varies(study[k])]
        split = [*keys, *batch]
        parts = study.groupby(split, sort=True, dropna=False) if split else [((), study)]
        for values, group in parts:
            named = dict(zip([*studies, *keys, *batch], [*study_values, *values], strict=True))
            yield (*_names(named, keys), named.get("batch_size"), group)


def _varies(values: pd.Series) -> bool:
    return bool(values.notna().all()) and values.astype(str).nunique() > 1


def _names(named: dict, keys: list[str]) -> tuple[str, str]:
    model, data = named.get("config.model.name"), named.get("config.data.name")
    study = f"{fmt(named.get('sweep'))} ({fmt(model)} on {fmt(data)})"
    parts = []
    if "batch_size" in named:
        size, statistics = named["batch_size"], named["statistics_batch_size"]
        parts.append(
            f"batch {size}" + (f" (statistics over {statistics})" if statistics != size else "")
        )
    parts += [f"{VARIED[k]}={fmt(named[k])}" for k in keys]
    return study, ", ".join(parts)


def applies(where: Where, runs: pd.DataFrame) -> pd.DataFrame:
    """The runs ``where`` keeps."""
    if runs.empty:
        return runs
    keep = pd.Series(True, index=runs.index)
    if where.sampler == "non_iid":
        keep &= runs["sampler"] == "non_iid"
    elif where.sampler == "iid":
        keep &= runs["sampler"] != "non_iid"
    size = runs["statistics_batch_size"]
    if where.min_statistics_batch is not None:
        keep &= size >= where.min_statistics_batch
    if where.max_statistics_batch is not None:
        keep &= size <= where.max_statistics_batch
    return runs.loc[keep]


def scheduled(claim: Claim, runs: pd.DataFrame) -> pd.DataFrame:
    """The runs of each label under the momentum schedule the claim fixes for it (all of them
    where it fixes none)."""
    if not claim.schedules or runs.empty:
        return runs
    kinds = dict(zip(claim.labels, claim.schedules, strict=True))
    schedule = column_of(runs, SCHEDULE_KEY).astype(object)
    return runs.loc[schedule == runs["mode"].map(kinds)]


# ----------------------------------------------------------------------------- scores


def per_seed(runs: pd.DataFrame, values: pd.Series) -> pd.Series:
    """``values`` of ``runs`` averaged per seed (NaN: nothing recorded, left out)."""
    return pd.to_numeric(values, errors="coerce").groupby(runs["seed"]).mean()


def _diverged(runs: pd.DataFrame, label: str) -> str:
    part = runs.loc[runs["mode"] == label]
    return f"{label}: {int(part['diverged'].sum())}/{len(part)} diverged"


def _mean_test(values: np.ndarray) -> PValue:
    """The p-values that go with :func:`normlab.stats.mean_interval` of ``values`` under the
    interval method in force now (the t test, or the inverted bootstrap interval)."""
    method = stats.current_method()
    if method == "t":
        return lambda null, alternative: stats.t_p_value(values, null, alternative)
    return lambda null, alternative: stats.interval_p_value(
        lambda level: stats.mean_interval(values, level, method), null, alternative
    )


def _inverted(interval_at: Callable[[float], stats.Interval]) -> PValue:
    return lambda null, alternative: stats.interval_p_value(interval_at, null, alternative)


def _paired_comparison(
    study: str, setting: str, size: int | None, a: pd.Series, b: pd.Series, detail: str
) -> Comparison:
    """``a − b`` per seed (series indexed by seed), with the mean's interval and test."""
    differences = stats.paired_differences(a, b)
    joined = pd.concat({"a": a, "b": b}, axis=1, join="inner").loc[differences.index]
    values = differences.to_numpy(float)
    effect = stats.mean_interval(values)
    return Comparison(
        study,
        setting,
        effect,
        f"{effect.n} seeds paired; {detail}",
        size,
        _mean_test(values),
        joined["a"].to_numpy(float),
        joined["b"].to_numpy(float),
    )


# ----------------------------------------------------------------------------- effects


def paired(claim: Claim, evidence: Evidence) -> list[Comparison]:
    """Final ``metric`` (diverged runs at chance) of the first label minus the second, paired
    by seed, per setting; where the claim fixes each label's momentum schedule, only runs
    under it, the schedule no longer splitting settings."""
    first, second = claim.labels
    runs = scheduled(claim, applies(claim.where, evidence.labelled(first, second)))
    compared = (SCHEDULE_KEY,) if claim.schedules else ()
    comparisons = []
    for study, setting, size, group in settings(runs, compared=compared):
        if set(group["mode"]) != {first, second}:
            continue
        a, b = (group.loc[group["mode"] == m] for m in (first, second))
        detail = f"{_diverged(group, first)}, {_diverged(group, second)} (at chance)"
        if claim.reference_trains and not _trained(b, claim.metric):
            comparisons.append(_untrained_reference(study, setting, size, second, detail))
            continue
        comparisons.append(
            _paired_comparison(
                study,
                setting,
                size,
                per_seed(a, accuracy(a, claim.metric)),
                per_seed(b, accuracy(b, claim.metric)),
                detail,
            )
        )
    return comparisons


def _trained(runs: pd.DataFrame, metric: str) -> bool:
    """Whether the runs end on average more than the accuracy margin above chance accuracy."""
    return bool((accuracy(runs, metric) - chance(runs)).mean() > ACCURACY_MARGIN)


def _untrained_reference(
    study: str, setting: str, size: int | None, label: str, counts: str
) -> Comparison:
    nothing = stats.Interval(math.nan, math.nan, math.nan, 0, stats.current_method())
    margin = f"{ACCURACY_MARGIN * 100:g} pp"
    detail = (
        f"{label} did not train (on average within {margin} of chance), nothing to compare; "
        f"{counts}"
    )
    empty = np.array([], dtype=float)
    return Comparison(study, setting, nothing, detail, size, None, empty, empty)


def rates(claim: Claim, evidence: Evidence) -> list[Comparison]:
    """How often the first label diverged minus how often the second did, per setting
    (Newcombe's interval from the two Wilson intervals); a run's score is 1 if it diverged."""
    first, second = claim.labels
    comparisons = []
    for study, setting, size, group in settings(
        applies(claim.where, evidence.labelled(*claim.labels))
    ):
        if set(group["mode"]) != {first, second}:
            continue
        counts = [_count(group, m) for m in (first, second)]

        def interval_at(level: float, counts=counts) -> stats.Interval:
            return stats.newcombe_interval(*counts[0], *counts[1], level)

        detail = "; ".join(
            f"{m}: {k}/{n} {stats.wilson_interval(k, n).text(100.0, 0)} %"
            for m, (k, n) in zip((first, second), counts, strict=True)
        )
        a, b = (group.loc[group["mode"] == m, "diverged"].to_numpy(float) for m in claim.labels)
        effect = interval_at(stats.LEVEL)
        test = _inverted(interval_at)
        comparisons.append(Comparison(study, setting, effect, detail, size, test, a, b, False))
    return comparisons


def _count(runs: pd.DataFrame, label: str) -> tuple[int, int]:
    part = runs.loc[runs["mode"] == label]
    return int(part["diverged"].sum()), len(part)


def bias_growth(claim: Claim, evidence: Evidence) -> list[Comparison]:
    """Log growth of the pre-norm bias norm over each run (last finite over first positive
    value, from ``trace.csv`` or else the logged rows; diverged runs included), first label
    minus second, paired by seed."""
    first, second = claim.labels
    runs = applies(claim.where, evidence.labelled(first, second))
    if runs.empty:
        return []
    growth = _log_growth(evidence, runs["run_dir"], claim.metric)
    runs = runs.assign(growth=runs["run_dir"].map(growth))
    runs = runs.loc[runs["growth"].notna()]
    comparisons = []
    for study, setting, size, group in settings(runs):
        if set(group["mode"]) != {first, second}:
            continue
        a, b = (group.loc[group["mode"] == m] for m in (first, second))
        detail = f"{_diverged(group, first)}, {_diverged(group, second)}"
        comparisons.append(
            _paired_comparison(
                study, setting, size, per_seed(a, a["growth"]), per_seed(b, b["growth"]), detail
            )
        )
    return comparisons


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


def across_batch_sizes(claim: Claim, evidence: Evidence) -> list[Comparison]:
    """Final ``metric`` (diverged runs at chance) of the label at its largest batch size in a
    setting against each smaller one (Welch interval: different runs share no pairing). With
    ``claim.size`` the statistics batch size, the sizes are compared within one batch size."""
    comparisons = []
    runs = applies(claim.where, evidence.labelled(*claim.labels))
    for study, setting, _, whole in settings(runs, by_batch=False):
        if claim.size == "batch_size":
            parts = [(setting, whole)]
        else:
            parts = [
                (", ".join(p for p in (setting, f"batch {fmt(b)}") if p), group)
                for b, group in whole.groupby("batch_size", sort=True)
            ]
        for where, group in parts:
            comparisons += _across_sizes(claim, study, where, group)
    return comparisons


def _across_sizes(claim: Claim, study: str, setting: str, group: pd.DataFrame) -> list:
    sizes = sorted(set(group[claim.size]))
    if len(sizes) < 2:
        return []
    comparisons = []
    values = accuracy(group, claim.metric)
    by_size = {s: values[group[claim.size] == s].to_numpy(float) for s in sizes}
    reference = sizes[-1]
    name = "batch" if claim.size == "batch_size" else "statistics over"
    for size in sizes[:-1]:
        pair = (by_size[reference], by_size[size])
        a, b = pair if claim.largest_first else pair[::-1]

        def interval_at(level: float, a=a, b=b) -> stats.Interval:
            return stats.welch_interval(a, b, level)

        where = ", ".join(p for p in (setting, f"{name} {size} vs {reference}") if p)
        part = group.loc[group[claim.size].isin((size, reference))]
        detail = (
            f"{len(pair[1])} and {len(pair[0])} seeds ({name} {size}, {reference}); "
            f"{_diverged(part, claim.labels[0])} (at chance)"
        )
        effect, test = interval_at(stats.LEVEL), _inverted(interval_at)
        comparisons.append(Comparison(study, where, effect, detail, size, test, a, b, False))
    return comparisons


def precise_gain(claim: Claim, evidence: Evidence) -> list[Comparison]:
    """``val_acc_precise − val_acc_eval`` of the same run (precise against EMA population
    statistics, same weights), over seeds, per setting and label; a diverged run that asked
    for precise statistics is at chance in both, a gain of 0."""
    runs = applies(claim.where, evidence.labelled(*claim.labels))
    if runs.empty:
        return []
    asked = column_of(runs, "config.eval.precise_bn").fillna(False).astype(bool)
    precise = accuracy(runs, "val_acc_precise")
    runs = runs.assign(precise=precise, ema=accuracy(runs, "val_acc_eval"))
    logged = pd.to_numeric(column_of(runs, "val_acc_precise"), errors="coerce").notna()
    runs = runs.loc[logged | (runs["diverged"] & asked)]
    comparisons = []
    for study, setting, size, group in settings(runs):
        for label, part in group.groupby("mode", sort=True):
            where = f"{setting} [{label}]"
            comparisons.append(
                _paired_comparison(
                    study,
                    where,
                    size,
                    per_seed(part, part["precise"]),
                    per_seed(part, part["ema"]),
                    f"{_diverged(part, label)} (at chance)",
                )
            )
    return comparisons


BUILDERS: dict[str, Callable[[Claim, Evidence], list[Comparison]]] = {
    "paired": paired,
    "rates": rates,
    "bias_growth": bias_growth,
    "across_batch_sizes": across_batch_sizes,
    "precise_gain": precise_gain,
}
