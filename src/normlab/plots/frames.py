"""The numbers every figure and table draws, as pandas frames (metrics in their own units).

Aggregation rules, the same everywhere:

- means and their 95 % intervals (:func:`normlab.stats.mean_interval`: t over seeds, or the
  bootstrap) are over the seeds that did **not** diverge; no interval with one seed;
- a diverged run is counted (``n_diverged``; :func:`divergence_frame` gives its rate with a
  Wilson interval) and drawn on its own, never averaged;
- ``n`` counts every used run of a group, ``n_used`` the finite values averaged.

Each figure states the runs it needs (:class:`~normlab.plots.runs.Need`); the selections below
are those needs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from normlab import stats
from normlab.grouping import (
    column_of,
    missing,
    prepare_runs,
    run_metrics,
    sort_key,
    varied_keys,
    with_setting,
)
from normlab.plots.runs import Need, logs, order
from normlab.plots.style import label_rank
from normlab.quantities import DECLARED, Quantity, declared, drawn_in
from normlab.records import SETTING_KEYS
from normlab.results import load_traces

STAT_COLUMNS = ["mean", "low", "high", "n", "n_diverged", "n_used"]
# The setting keys the divergence figure has a panel for, under their setting labels.
DIVERGENCE_KEYS = {
    key: SETTING_KEYS[key]
    for key in (
        "config.optim.lr",
        "config.model.depth",
        "config.model.bias_before_norm",
        "config.momentum.kind",
    )
}
TRACE_METRICS = drawn_in("blowup_mechanism")

PRECISE = Need(
    "runs that recomputed precise statistics (val_acc_precise logged)", logs("val_acc_precise")
)
GHOST = Need(
    "runs with ghost batches (statistics_batch_size < batch_size)",
    lambda used: used["statistics_batch_size"] < used["batch_size"],
)
VALUES_PER_CHANNEL = Need("runs that record values_per_channel_min", logs("values_per_channel_min"))
NON_IID = Need("non-i.i.d. runs (config.data.sampler=non_iid)", lambda u: u["sampler"] == "non_iid")
IID = Need("i.i.d. runs", lambda used: used["sampler"] != "non_iid")


def interval_row(values: pd.Series) -> dict[str, float]:
    interval = stats.mean_interval(values)
    return {"mean": interval.estimate, "low": interval.low, "high": interval.high}


def final_stats(used: pd.DataFrame, metric: str, by: Sequence[str]) -> pd.DataFrame:
    """Final ``metric`` per group of ``by`` in prepared runs: ``mean`` and its interval
    ``low``–``high`` over non-diverged seeds, ``n`` runs in all, ``n_diverged`` of them
    diverged, ``n_used`` finite values averaged."""
    rows = []
    for key, group in used.groupby(list(by), sort=False, dropna=False):
        kept = group.loc[~group["diverged"]]
        values = kept[metric] if metric in kept else pd.Series(dtype=float)
        interval = stats.mean_interval(values)
        rows.append(
            {
                **dict(zip(by, key, strict=True)),
                "mean": interval.estimate,
                "low": interval.low,
                "high": interval.high,
                "n": len(group),
                "n_diverged": int(group["diverged"].sum()),
                "n_used": interval.n,
            }
        )
    return pd.DataFrame(rows, columns=[*by, *STAT_COLUMNS])


def final_by_batch_size(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Final ``metric`` per (label, setting, batch size), see :func:`final_stats`."""
    used = with_setting(prepare_runs(runs))
    frame = final_stats(used, metric, ["mode", "batch_size", "setting", "setting_order"])
    return order(frame, ["batch_size"])


def accuracy_vs_batch_size_frame(runs: pd.DataFrame) -> pd.DataFrame:
    """Final ``val_acc_eval`` per label and batch size (see :func:`final_by_batch_size`)."""
    return final_by_batch_size(runs, "val_acc_eval")


def train_eval_gap_frame(runs: pd.DataFrame) -> pd.DataFrame:
    """Final ``gap_train_minus_eval`` and ``kl_train_eval`` per label and batch size, long:
    one row per (metric, label, setting, batch size)."""
    frames = [
        final_by_batch_size(runs, m).assign(metric=m)
        for m in ("gap_train_minus_eval", "kl_train_eval")
    ]
    frame = pd.concat(frames, ignore_index=True)
    return frame[["metric", *[c for c in frame.columns if c != "metric"]]]


def values_per_channel_frame(runs: pd.DataFrame) -> pd.DataFrame:
    """Final ``val_acc_eval`` against ``values_per_channel_min`` (the fewest values any layer's
    per-channel statistics come from: batch × positions), per (label, architecture — model on
    data set —, other varied settings)."""
    used = prepare_runs(runs)
    used = used.loc[VALUES_PER_CHANNEL.keep(used)] if not used.empty else used
    used = with_setting(used, exclude=["config.model.name", "config.data.name"])
    used["architecture"] = [
        f"{model} on {data}"
        for model, data in zip(
            column_of(used, "config.model.name", "model"),
            column_of(used, "config.data.name", "data"),
            strict=True,
        )
    ]
    used["values_per_channel"] = pd.to_numeric(used.get("values_per_channel_min"))
    by = ["mode", "architecture", "setting", "setting_order", "values_per_channel"]
    frame = final_stats(used, "val_acc_eval", by)
    return order(frame, ["architecture", "values_per_channel"])


# ----------------------------------------------------------------------------- over steps


def mean_over_seeds(rows: pd.DataFrame, metrics: Sequence[str], by: Sequence[str]) -> pd.DataFrame:
    """Per (``by``, metric, step): ``mean``, its interval ``low``–``high`` and ``n`` over the
    non-diverged runs."""
    present = [m for m in metrics if m in rows]
    kept = rows.loc[~rows["diverged"].astype(bool)]
    columns = [*by, "setting_order", "metric", "step", "mean", "low", "high", "n"]
    if kept.empty or not present:
        return pd.DataFrame(columns=columns)
    long = kept.melt(
        id_vars=[*by, "setting_order", "step"],
        value_vars=present,
        var_name="metric",
        value_name="value",
    )
    long["value"] = pd.to_numeric(long["value"], errors="coerce")
    long = long.loc[np.isfinite(long["value"])]
    out = []
    for key, group in long.groupby([*by, "setting_order", "metric", "step"], sort=False):
        out.append([*key, *interval_row(group["value"]).values(), len(group)])
    return pd.DataFrame(out, columns=columns)


def _trace_frame(
    runs: pd.DataFrame,
    metrics: pd.DataFrame | None,
    names: Sequence[str],
    by: Sequence[str],
    exclude: Sequence[str] = (),
    keep: Callable[[pd.DataFrame], pd.Series] | None = None,
) -> pd.DataFrame:
    rows = run_metrics(runs, metrics, exclude)
    if keep is not None and not rows.empty:
        rows = rows.loc[keep(rows)]
    frame = mean_over_seeds(rows, names, by)
    return order(frame, [c for c in by if c not in ("mode", "setting")] + ["metric", "step"])


def accuracy_vs_step_frame(
    runs: pd.DataFrame, metrics: pd.DataFrame | None = None, sampler: str = "iid"
) -> pd.DataFrame:
    """``val_acc_eval`` per (label, setting, batch size, step) over the non-diverged seeds of
    the runs whose sampler is ``sampler`` ("iid": every sampler but ``non_iid``)."""
    need = NON_IID if sampler == "non_iid" else IID
    frame = _trace_frame(
        runs,
        metrics,
        ["val_acc_eval"],
        ["mode", "setting", "batch_size"],
        exclude=["config.data.sampler"],
        keep=need.keep,
    )
    return frame.drop(columns=["metric"])


def decay_schedules_frame(runs: pd.DataFrame, metrics: pd.DataFrame | None = None) -> pd.DataFrame:
    """``val_acc_eval``, ``mean_shift`` and ``std_ratio`` per (momentum kind, label, setting,
    batch size, metric, step), over non-diverged seeds."""
    return _trace_frame(
        runs,
        metrics,
        drawn_in("decay_schedules"),
        ["momentum_kind", "mode", "setting", "batch_size"],
        exclude=["config.momentum.kind"],
    )


def bounded(declarations: Iterable[Any]) -> dict[str, Quantity]:
    """The quantities these records' modes declare (:data:`~normlab.quantities.DECLARED`) that
    are drawn against a bound, by name, in the order first declared."""
    return {n: q for n, q in declared(declarations).items() if q.bound is not None}


def declares(used: pd.DataFrame, name: str) -> pd.Series:
    """Runs whose mode declares ``name`` with a bound."""
    return column_of(used, DECLARED).map(lambda value: name in bounded([value])).astype(bool)


def _logs_internals(used: pd.DataFrame) -> pd.Series:
    """Runs whose mode declares a quantity with a bound and that log a final value of it."""
    keep = pd.Series(False, index=used.index)
    for name in bounded(column_of(used, DECLARED)):
        keep |= declares(used, name) & logs(name)(used)
    return keep


INTERNALS = Need(
    f"runs that log a quantity their mode declares with a bound ({DECLARED} in summary.json)",
    _logs_internals,
)


def internals_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The used runs that log a quantity their mode declares with a bound (:data:`INTERNALS`)."""
    used = prepare_runs(runs)
    return used if used.empty else used.loc[INTERNALS.keep(used)]


def mode_internals_frame(runs: pd.DataFrame, metrics: pd.DataFrame | None = None) -> pd.DataFrame:
    """For :func:`internals_runs`: each quantity their modes declare with a bound (renorm's
    ``r_clip_frac``, ``d_clip_frac``) and each bound (``rmax``, ``dmax``), per (label, setting,
    batch size, metric, step), over non-diverged seeds."""
    used = internals_runs(runs)
    quantities = bounded(column_of(used, DECLARED)).values()
    names = dict.fromkeys(name for q in quantities for name in (q.name, q.bound))
    kept = set(used["run_dir"])
    return _trace_frame(
        runs,
        metrics,
        list(names),
        ["mode", "setting", "batch_size"],
        keep=lambda rows: rows["run_dir"].isin(kept),
    )


# ----------------------------------------------------------------------------- precise, ghost


def precise_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The used runs that recomputed precise population statistics (``eval.precise_bn``):
    those with a final ``val_acc_precise``, and diverged ones that asked for it (a mode without
    normalization layers logs none, so it is left out). ``setting`` varies over these runs only.
    """
    used = prepare_runs(runs)
    if used.empty:
        return with_setting(used)
    asked = column_of(used, "config.eval.precise_bn").map(lambda v: not missing(v) and bool(v))
    return with_setting(used.loc[PRECISE.keep(used) | (asked & used["diverged"])])


def precise_statistics_frame(runs: pd.DataFrame) -> pd.DataFrame:
    """For :func:`precise_runs`, per (label, setting, batch size), long (one row per metric):
    final ``val_acc_eval`` (EMA population statistics), ``val_acc_precise`` (recomputed over
    ``eval.precise_batches`` training batches, same weights) and ``precise_minus_eval``, their
    difference. The difference is paired: taken per run, then averaged over non-diverged seeds,
    so its interval is that of the per-seed differences."""
    used = precise_runs(runs)
    used["precise_minus_eval"] = pd.to_numeric(
        column_of(used, "val_acc_precise"), errors="coerce"
    ) - pd.to_numeric(column_of(used, "val_acc_eval"), errors="coerce")
    by = ["mode", "batch_size", "setting", "setting_order"]
    frames = [
        order(final_stats(used, metric, by), ["batch_size"]).assign(metric=metric)
        for metric in ("val_acc_eval", "val_acc_precise", "precise_minus_eval")
    ]
    frame = pd.concat(frames, ignore_index=True)
    return frame[["metric", *[c for c in frame.columns if c != "metric"]]]


def ghost_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs with ghost batches (:data:`GHOST`), and as their reference the runs of the same
    normalization modes whose statistics cover the whole batch, at the same batch sizes.
    ``setting`` varies over these runs only, the statistics batch size excluded."""
    used = prepare_runs(runs)
    if used.empty:
        return with_setting(used)
    ghost = used.loc[GHOST.keep(used)]
    modes = set(column_of(ghost, "config.norm.mode").astype(str))
    same_mode = column_of(used, "config.norm.mode").astype(str).isin(modes)
    whole = (used["statistics_batch_size"] == used["batch_size"]) & same_mode
    keep = GHOST.keep(used) | (whole & used["batch_size"].isin(set(ghost["batch_size"])))
    return with_setting(used.loc[keep], exclude=["statistics_sub_batch"])


def ghost_batch_frame(runs: pd.DataFrame) -> pd.DataFrame:
    """For :func:`ghost_runs`: final ``val_acc_eval`` and ``val_acc_train_mode`` per (setting,
    batch size, statistics batch size, label), long (one row per metric); see
    :func:`final_stats`."""
    used = ghost_runs(runs)
    by = ["setting", "setting_order", "batch_size", "statistics_batch_size", "mode"]
    frames = []
    for metric in ("val_acc_eval", "val_acc_train_mode"):
        frame = final_stats(used, metric, by).assign(metric=metric)
        frame["_label"] = frame["mode"].map(label_rank)
        frame = frame.sort_values([*by[1:4], "_label"], kind="stable")
        frames.append(frame.drop(columns=["_label", "setting_order"]))
    frame = pd.concat(frames, ignore_index=True)
    return frame[["metric", *[c for c in frame.columns if c != "metric"]]]


# ----------------------------------------------------------------------------- divergence


def diverged_traces_frame(runs: pd.DataFrame, metrics: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every logged row of the diverged runs, with ``divergence_step`` and grouping columns."""
    rows = run_metrics(runs, metrics)
    if rows.empty:
        return rows
    return rows.loc[rows["diverged"].astype(bool)].reset_index(drop=True)


def _rate_row(group: pd.DataFrame) -> dict[str, float]:
    n, k = len(group), int(group["diverged"].sum())
    rate = stats.wilson_interval(k, n)
    return {
        "n": n,
        "n_diverged": k,
        "fraction": rate.estimate,
        "low": rate.low,
        "high": rate.high,
        "n_param_growth": int(group["param_growth"].sum()),
    }


RATE_COLUMNS = ["n", "n_diverged", "fraction", "low", "high", "n_param_growth"]


def divergence_frame(runs: pd.DataFrame) -> pd.DataFrame:
    """Per varied key of :data:`DIVERGENCE_KEYS`, value and label: ``n`` runs, ``n_diverged``,
    ``fraction`` with its 95 % Wilson interval ``low``–``high``, and ``n_param_growth`` (runs
    whose parameter norm passed its growth factor, a signal of its own). Other keys are
    pooled, so each key's panel is a marginal."""
    used = prepare_runs(runs)
    rows = []
    for key in varied_keys(used, list(DIVERGENCE_KEYS)):
        for (mode, value), group in used.groupby(["mode", key], sort=False, dropna=False):
            rows.append({"key": key, "value": value, "mode": mode, **_rate_row(group)})
    frame = pd.DataFrame(rows, columns=["key", "value", "mode", *RATE_COLUMNS])
    if frame.empty:
        return frame
    frame["_value"] = frame["value"].map(sort_key)
    return order(frame, ["key", "_value"]).drop(columns=["_value"])


def divergence_table_frame(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (label, setting, batch size): the rates of :func:`divergence_frame`, the first
    divergence step and the signals that fired."""
    used = with_setting(prepare_runs(runs))
    rows = []
    for (mode, setting, order_, size), group in used.groupby(
        ["mode", "setting", "setting_order", "batch_size"], sort=False
    ):
        steps = pd.to_numeric(column_of(group, "divergence_step"), errors="coerce")
        signals = column_of(group, "divergence_signal").dropna().astype(str)
        rows.append(
            {
                "mode": mode,
                "setting": setting,
                "setting_order": order_,
                "batch_size": size,
                **_rate_row(group),
                "first_divergence_step": steps.min(),
                "signals": ", ".join(sorted(set(signals))),
            }
        )
    columns = ["mode", "setting", "setting_order", "batch_size", *RATE_COLUMNS]
    frame = pd.DataFrame(rows, columns=[*columns, "first_divergence_step", "signals"])
    return order(frame, ["batch_size"])


def traced_runs(runs: pd.DataFrame, traces: pd.DataFrame | None = None) -> pd.DataFrame:
    """The per-step trace rows (``trace.csv``) of the runs in the settings where a traced run
    diverged: the blow-ups and, beside them, the runs of the same setting that did not."""
    used = with_setting(prepare_runs(runs))
    if traces is None:
        traces = load_traces(used)
    columns = ["run_dir", "mode", "seed", "setting", "setting_order", "diverged"]
    per_run = used[columns].assign(
        divergence_step=pd.to_numeric(column_of(used, "divergence_step"), errors="coerce")
    )
    rows = traces.merge(per_run, on="run_dir", how="inner")
    blown = set(rows.loc[rows["diverged"].astype(bool), "setting"])
    rows = rows.loc[rows["setting"].isin(blown)].assign(_label=lambda f: f["mode"].map(label_rank))
    keys = ["setting_order", "_label", "diverged", "seed", "run_dir", "step"]
    return rows.sort_values(keys, kind="stable").drop(columns=["_label"]).reset_index(drop=True)
