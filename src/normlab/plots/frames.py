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

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from normlab import labels, papers, stats
from normlab.grouping import (
    chance,
    column_of,
    fmt,
    missing,
    prepare_runs,
    run_metrics,
    scored_accuracy,
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

    def kept(group: pd.DataFrame) -> pd.Series:
        finished = group.loc[~group["diverged"]]
        return finished[metric] if metric in finished else pd.Series(dtype=float)

    return _group_intervals(used, by, kept, STAT_COLUMNS)


def _group_intervals(
    used: pd.DataFrame,
    by: Sequence[str],
    values: Callable[[pd.DataFrame], pd.Series],
    columns: Sequence[str],
    extra: Callable[[pd.DataFrame], dict[str, float]] = lambda group: {},
) -> pd.DataFrame:
    """Per group of ``by``: the mean of ``values(group)`` with its interval, the group's run
    and divergence counts, and ``extra(group)``."""
    rows = []
    for key, group in used.groupby(list(by), sort=False, dropna=False):
        interval = stats.mean_interval(values(group))
        rows.append(
            {
                **dict(zip(by, key, strict=True)),
                "mean": interval.estimate,
                "low": interval.low,
                "high": interval.high,
                "n": len(group),
                "n_diverged": int(group["diverged"].sum()),
                "n_used": interval.n,
                **extra(group),
            }
        )
    return pd.DataFrame(rows, columns=[*by, *columns])


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
    :func:`final_stats`. ``norm_mode`` is the mode behind each label (a line joins a mode's
    ghost and whole-batch points)."""
    used = ghost_runs(runs)
    used = used.assign(norm_mode=column_of(used, "config.norm.mode").astype(str))
    by = ["setting", "setting_order", "batch_size", "statistics_batch_size", "mode", "norm_mode"]
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


# ----------------------------------------------------------------------------- failures counted

ARCHITECTURE_KEYS = ("config.model.name", "config.data.name")
SWITCH_AT, SWITCH_FREEZE = "config.norm.switch_at", "config.norm.switch_freeze"
FAILURE_COLUMNS = [*STAT_COLUMNS, "chance"]


def architecture(used: pd.DataFrame) -> pd.Series:
    """Each run's model on data set ("mlp on mnist1d")."""
    model = column_of(used, "config.model.name", "").map(fmt)
    data = column_of(used, "config.data.name", "").map(fmt)
    return model + " on " + data


def _two_architectures(used: pd.DataFrame) -> pd.Series:
    return pd.Series(architecture(used).nunique() > 1, index=used.index)


def _schedules_per_label(used: pd.DataFrame) -> pd.Series:
    return used.groupby("mode")["momentum_kind"].transform(lambda k: k.astype(str).nunique()) > 1


BY_SETTING = Need("runs of two or more models or data sets", _two_architectures)
SCHEDULES = Need("runs of one label under two or more momentum schedules", _schedules_per_label)
SWITCHED = Need(
    f"runs that switch to population statistics ({SWITCH_AT.removeprefix('config.')} set)",
    lambda used: pd.to_numeric(column_of(used, SWITCH_AT), errors="coerce").notna(),
)
ABLATION = Need(
    f"runs of {papers.MABN_MODE} (config.norm.mode), the mode of {papers.MABN_SOURCE}",
    lambda used: column_of(used, "config.norm.mode").astype(str) == papers.MABN_MODE,
)


def failure_stats(used: pd.DataFrame, metric: str, by: Sequence[str]) -> pd.DataFrame:
    """Final ``metric`` per group of ``by`` in prepared runs, a diverged run counted as a
    failure at its chance accuracy (:func:`normlab.grouping.scored_accuracy`): ``mean`` and its
    interval ``low``–``high`` over every seed, ``n`` runs, ``n_diverged`` of them diverged,
    ``n_used`` values averaged and ``chance`` (the group's mean chance accuracy)."""
    scored = used.assign(_score=scored_accuracy(used, metric), _chance=chance(used))
    return _group_intervals(
        scored,
        by,
        lambda group: group["_score"],
        FAILURE_COLUMNS,
        lambda group: {"chance": float(group["_chance"].mean())},
    )


def with_panel(used: pd.DataFrame, exclude: Sequence[str] = ()) -> pd.DataFrame:
    """Add ``panel``: the run's model on data set, then the setting keys that vary within that
    model on data set less ``exclude`` ("mlp on mnist1d, lr=0.1"), and ``panel_order`` (data set,
    model, then the settings by value)."""
    if used.empty:
        return used.assign(panel="", panel_order=0)
    out = used.assign(_data=column_of(used, "config.data.name", "").map(fmt))
    out = out.assign(_model=column_of(out, "config.model.name", "").map(fmt))
    parts = []
    for rank, ((data, model), group) in enumerate(out.groupby(["_data", "_model"], sort=True)):
        inner = with_setting(group, exclude=[*ARCHITECTURE_KEYS, *exclude])
        head = f"{model} on {data}"
        inner["panel"] = [f"{head}, {s}" if s else head for s in inner["setting"]]
        inner["panel_order"] = [(rank, s) for s in inner["setting_order"]]
        parts.append(inner.drop(columns=["setting", "setting_order", "_data", "_model"]))
    out = pd.concat(parts)
    ranks = {key: i for i, key in enumerate(sorted(set(out["panel_order"])))}
    return out.assign(panel_order=out["panel_order"].map(ranks))


def by_panel(frame: pd.DataFrame, by: Sequence[str] = ()) -> pd.DataFrame:
    """Panels in order, labels in the registry's order, then ``by``; drops ``panel_order``."""
    keyed = frame.assign(_label=frame["mode"].map(label_rank))
    keyed = keyed.sort_values(["panel_order", "_label", *by], kind="stable")
    return keyed.drop(columns=["_label", "panel_order"]).reset_index(drop=True)


def accuracy_by_setting_frame(runs: pd.DataFrame) -> pd.DataFrame:
    """Final ``val_acc_eval`` per (panel, label, batch size), diverged runs at chance
    (:func:`failure_stats`); a panel per model on data set (:func:`with_panel`); a label run
    under several momentum schedules at its constant one (:func:`at_constant_schedule`)."""
    used = with_panel(at_constant_schedule(prepare_runs(runs)))
    by = ["panel", "panel_order", "mode", "batch_size"]
    return by_panel(failure_stats(used, "val_acc_eval", by), ["batch_size"])


def at_constant_schedule(used: pd.DataFrame) -> pd.DataFrame:
    """The runs less those of a label, model and data set under a non-constant momentum schedule
    where the same label also ran under a constant one: the overview draws each label once, as
    the seed question trains it; ``schedules_by_setting`` draws the schedules."""
    kind = column_of(used, "config.momentum.kind").astype(str)
    keys = [column_of(used, k, "").map(fmt) for k in ("config.data.name", "config.model.name")]
    group = pd.Series(list(zip(*keys, used["mode"], strict=True)), index=used.index)
    with_constant = set(group[kind == "constant"])
    return used.loc[(kind == "constant") | ~group.isin(with_constant)]


def schedule_text(used: pd.DataFrame) -> pd.Series:
    """Each run's momentum schedule as read: "constant momentum 0.1", "linear decay 0.5→0.99",
    "cumulative" (a record carries the default ``value`` under every kind: only a constant
    schedule reads it)."""
    columns = [f"config.momentum.{k}" for k in ("value", "start", "end", "convention")]
    values = zip(used["momentum_kind"], *(column_of(used, c) for c in columns), strict=True)
    texts = []
    for kind, value, start, end, convention in values:
        words = [str(kind)] + ([] if missing(convention) else [str(convention)])
        if str(kind) == "constant" and not missing(value):
            texts.append(" ".join([*words, fmt(value)]))
        elif not (missing(start) or missing(end)):
            texts.append(" ".join([*words, f"{fmt(start)}→{fmt(end)}"]))
        else:
            texts.append(str(kind))
    return pd.Series(texts, index=used.index, dtype=object)


def schedules_by_setting_frame(runs: pd.DataFrame) -> pd.DataFrame:
    """Final ``val_acc_eval`` per (panel, label, momentum ``schedule``, batch size), diverged runs
    at chance, for the labels run under several schedules in a panel and the baselines beside
    them (:data:`normlab.labels.SCHEDULE_BASELINES`, ``schedule`` empty: each drawn as itself).
    Panels as :func:`with_panel`, the momentum schedule excluded."""
    used = prepare_runs(runs)
    used = with_panel(used.assign(schedule=schedule_text(used)), exclude=["config.momentum.kind"])
    if used.empty:
        return pd.DataFrame(columns=["panel", "mode", "schedule", "batch_size", *FAILURE_COLUMNS])
    several = used.groupby(["panel", "mode"])["schedule"].transform("nunique") > 1
    used = used.loc[several | used["mode"].isin(labels.SCHEDULE_BASELINES)]
    used["schedule"] = used["schedule"].where(several, "")
    by = ["panel", "panel_order", "mode", "schedule", "batch_size"]
    return by_panel(failure_stats(used, "val_acc_eval", by), ["schedule", "batch_size"])


def switch_point_frame(runs: pd.DataFrame) -> pd.DataFrame:
    """Final ``val_acc_eval`` per (panel, label, ``frozen``, ``switch_at``), diverged runs at
    chance, for the labels with runs that switch (``norm.switch_at``): ``frozen`` says whether
    the running statistics stopped absorbing batches after the switch. A run of those labels
    that never switches (batch statistics throughout) stands at ``switch_at`` 1 of each line
    that has no run of its own there. A panel per model on data set (:func:`with_panel`), and per
    batch size where the switching runs have several."""
    used = prepare_runs(runs)
    at = pd.to_numeric(column_of(used, SWITCH_AT), errors="coerce")
    switched = used.loc[at.notna()]
    keep = used["mode"].isin(set(switched["mode"]))
    keep &= used["batch_size"].isin(set(switched["batch_size"]))
    frozen = column_of(used, SWITCH_FREEZE).map(lambda v: not missing(v) and bool(v))
    used = with_panel(used.assign(switch_at=at, frozen=frozen).loc[keep])
    if used["batch_size"].nunique() > 1:
        used["panel"] = used["panel"] + ", batch " + used["batch_size"].astype(str)
        used["panel_order"] = list(zip(used["panel_order"], used["batch_size"], strict=True))
        ranks = {key: i for i, key in enumerate(sorted(set(used["panel_order"])))}
        used["panel_order"] = used["panel_order"].map(ranks)
    line = ["panel", "panel_order", "mode", "frozen"]
    switching, never = used.loc[used["switch_at"].notna()], used.loc[used["switch_at"].isna()]
    parts = [switching]
    for key, points in switching.groupby(line, sort=False):
        if (points["switch_at"] == 1.0).any():
            continue
        same = (never[line[:3]] == pd.Series(key[:3], index=line[:3])).all(axis=1)
        parts.append(never.loc[same].assign(switch_at=1.0, frozen=key[3]))
    by = [*line, "switch_at"]
    frame = failure_stats(pd.concat(parts), "val_acc_eval", by)
    return by_panel(frame, ["frozen", "switch_at"])


def _variant_text(values: Mapping[str, Any]) -> str:
    words = []
    for key, value in values.items():
        if isinstance(value, bool | np.bool_):
            words += [f"+ {key}"] if value else []
        elif not missing(value):
            words.append(f"{key}={fmt(value)}")
    return " ".join(words)


def ablation_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The studies (sweeps) that hold runs of the paper's mode (:data:`ABLATION`), at the
    statistics batch sizes of those runs and of the paper's table: each run with ``row`` (its
    label, then every model option that varies among them, "+ centred_weights" for a true
    switch) and ``panel`` (:func:`with_panel`, those options and the statistics batch size
    excluded: the normalization batch is drawn within a panel)."""
    used = prepare_runs(runs)
    ours = used.loc[ABLATION.keep(used)] if not used.empty else used
    if ours.empty:
        return with_panel(ours.assign(row=""))
    sizes = set(ours["statistics_batch_size"])
    sizes |= {size for _, size, _ in papers.mabn_rows()}
    keep = used["sweep"].isin(set(ours["sweep"])) & used["statistics_batch_size"].isin(sizes)
    used = used.loc[keep]
    options = [
        c
        for c in used.columns
        if c.startswith("config.model.")
        and c not in ARCHITECTURE_KEYS
        and used[c].map(fmt).nunique() > 1
    ]
    names = {c: c.rsplit(".", 1)[-1] for c in options}
    variants = [
        _variant_text({names[c]: value for c, value in zip(options, row, strict=True)})
        for row in used[options].itertuples(index=False, name=None)
    ]
    rows = [
        _row_text(label, variant) for label, variant in zip(used["mode"], variants, strict=True)
    ]
    used = used.assign(row=rows)
    return with_panel(used, exclude=[*options, "statistics_sub_batch"])


def _row_text(label: str, variant: str) -> str:
    """The label, then the model options it does not already name ("mabn + centred weights"
    names ``centred_weights``)."""
    if variant and variant.replace("_", " ") in label.replace("_", " "):
        return label
    return " ".join(filter(None, (label, variant)))


def ablation_frame(runs: pd.DataFrame) -> pd.DataFrame:
    """For :func:`ablation_runs`: final held-out *error* (``1 − val_acc_eval``) per (panel, row,
    statistics batch size, batch size), ``mean`` and its interval ``low``–``high`` over every
    seed, a diverged run counted at chance (error ``1 − chance``)."""
    used = ablation_runs(runs)
    by = ["panel", "panel_order", "row", "mode", "statistics_batch_size", "batch_size"]
    frame = failure_stats(used, "val_acc_eval", by)
    frame["mean"], frame["low"], frame["high"] = (
        1 - frame["mean"],
        1 - frame["high"],
        1 - frame["low"],
    )
    return by_panel(frame, ["row", "statistics_batch_size", "batch_size"])
