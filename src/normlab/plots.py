"""``normlab-plot``: figures and tables from run records, without wandb and without training.

Reads ``results/runs/...`` through :mod:`normlab.results` and writes, as PNG (200 dpi) and PDF:

- ``accuracy_vs_step`` (and ``accuracy_vs_step_non_iid``): validation accuracy with population
  statistics against training step, one panel per batch size (Ioffe 2017, Figs. 1-3).
- ``accuracy_vs_batch_size``: final validation accuracy against batch size (Wu & He 2018, Fig. 1).
- ``train_eval_gap``: train-mode minus eval-mode accuracy, and their KL, against batch size.
- ``divergence`` and ``divergence_traces``: how often each mode diverged per learning rate, depth
  or momentum schedule, and the loss and parameter norm of the runs that did.
- ``decay_schedules``: accuracy and statistics mismatch over training per momentum schedule.
- ``renorm_internals``: fraction of clipped r and d against the rmax/dmax schedule.
- ``precise_statistics``: for runs with ``eval.precise_bn``, final accuracy with the EMA
  population statistics against the same weights with precisely recomputed ones (fvcore
  PreciseBN; Wu & Johnson 2021), and their difference, against batch size.
- ``ghost_batch``: final eval- and train-mode accuracy against the virtual batch size of ghost
  batch norm (Hoffer et al. 2017), one panel per optimizer batch size.

and ``summary.md``/``.tex``/``.csv``: mean ± std over seeds per mode and batch size (with the
precise-statistics accuracy and time per evaluation when some run recorded them).

Aggregation rules, the same in every figure and table:

- Only ``completed`` and ``diverged`` runs are drawn; incomplete, running, interrupted and failed
  runs are left out with one message naming them (their last numbers are not final ones).
- Means and standard deviations (sample std, ddof=1; no band with one seed) are over the seeds
  that did **not** diverge. A diverged run would otherwise pull a mean towards chance level and
  hide how often divergence happens; instead it is drawn on its own (a thin line that ends with
  a × at its last logged row) or counted (a hollow marker with ``k/n div.``, and the
  ``n_diverged`` column), and the ``divergence`` figure shows the fractions.
- Runs are grouped by mode (ghost batch norm is its own mode, ``batch (ghost)``), batch size and
  every key of :data:`SETTING_KEYS` that the results vary (a line style per setting).

Each figure is a pure ``<name>_frame`` function (the numbers drawn, in the metric's own units;
drawing turns accuracies into %) and a ``plot_<name>`` function that returns a matplotlib
:class:`~matplotlib.figure.Figure` or raises :class:`Skip` saying what the results lack. Output
is deterministic: fixed rcParams, the Agg renderer, no timestamps in PNG or PDF metadata.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import LogFormatter, MaxNLocator, NullLocator

from normlab.results import load_metrics, load_runs

# Okabe & Ito (2008), colour-blind safe; grey and black for the two baselines without batch stats.
MODE_COLORS = {
    "batch": "#0072B2",
    "batch (ghost)": "#56B4E9",
    "moving_average": "#D55E00",
    "renorm": "#009E73",
    "online": "#CC79A7",
    "group": "#E69F00",
    "layer": "#000000",
    "none": "#999999",
}
MODE_MARKERS = {
    "batch": "o",
    "batch (ghost)": "v",
    "moving_average": "s",
    "renorm": "^",
    "online": "D",
    "group": "P",
    "layer": "X",
    "none": ".",
}
EXTRA_COLORS = ("#F0E442", "#7F3C8D", "#11A579")
LINESTYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3)))
MODE_ORDER = tuple(MODE_COLORS)
# The second of two metrics drawn per mode: half-filled markers, so that a lone point (no line
# to show its style) still says which it is; hollow markers already mean "some seeds diverged".
SECOND = {"fillstyle": "top", "markerfacecoloralt": "white", "markersize": 5}

# Config keys that split runs into separate lines/rows when the results vary them.
SETTING_KEYS = {
    "config.data.name": "data",
    "config.model.name": "model",
    "config.model.depth": "depth",
    "config.model.bias_before_norm": "bias before norm",
    "config.optim.lr": "lr",
    "config.momentum.kind": "momentum",
    "config.data.sampler": "sampler",
    "config.norm.virtual_batch_size": "ghost batch",
}
DIVERGENCE_KEYS = {
    "config.optim.lr": "learning rate",
    "config.model.depth": "depth",
    "config.momentum.kind": "momentum schedule",
}
# Keys that say where and how a run was recorded, or that the grouping already covers.
NOT_SETTINGS = (
    "config.paths.",
    "config.logger.",
    "config.checkpoint.",
    "config.device",
    "config.threads",
    "config.progress",
    "config.resume",
    "config.overwrite",
    "config.sweep",
    "config.tags",
    "config.seed",
    "config.norm.mode",
    "config.batch_size",
)

USED_STATUSES = ("completed", "diverged")
SKIP_REASONS = {
    "incomplete": "killed before finishing",
    "running": "still running",
    "interrupted": "stopped by a signal before the last step; resume them to finish",
    "failed": "stopped by an error; see their summary.json",
}
SUMMARY_METRICS = (
    "val_acc_eval",
    "val_acc_train_mode",
    "gap_train_minus_eval",
    "kl_train_eval",
    "best_val_acc_eval",
)
# Summary columns added only when some run recomputed precise statistics (eval.precise_bn).
PRECISE_METRICS = ("val_acc_precise", "precise_seconds")
PERCENT = {
    "val_acc_eval",
    "val_acc_train_mode",
    "gap_train_minus_eval",
    "best_val_acc_eval",
    "r_clip_frac",
    "d_clip_frac",
    "val_acc_precise",
    "precise_minus_eval",
}
LABELS = {
    "val_acc_eval": "validation accuracy (%)",
    "val_acc_train_mode": "val. accuracy, train mode (%)",
    "gap_train_minus_eval": "train − eval mode acc. (pp)",
    "kl_train_eval": "KL(train ‖ eval mode) (nats)",
    "best_val_acc_eval": "best val. accuracy (%)",
    "mean_shift": "mean shift |μ_B − μ| / σ",
    "std_ratio": "std ratio σ_B / σ",
    "loss": "training loss",
    "param_norm": "parameter norm ‖θ‖",
    "r_clip_frac": "r clipped (% of channels)",
    "d_clip_frac": "d clipped (% of channels)",
    "val_acc_precise": "val. accuracy, precise stats (%)",
    "precise_minus_eval": "precise − EMA stats acc. (pp)",
    "precise_seconds": "precise-BN time per eval. (s)",
}
BAND_TEXT = "mean ± 1 std over non-diverged seeds"

PANEL_WIDTH, PANEL_HEIGHT = 3.3, 2.3  # inches: one panel reads at single-column width
DPI = 200
STYLE = {
    "font.family": "DejaVu Sans",
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "legend.frameon": False,
    "lines.linewidth": 1.2,
    "lines.markersize": 4,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.linewidth": 0.4,
    "grid.alpha": 0.4,
    "savefig.dpi": DPI,
    "pdf.fonttype": 42,
    "svg.hashsalt": "normlab",
    "image.cmap": "cividis",
}


class Skip(Exception):  # not an error: the results do not hold what a figure needs
    """A figure cannot be drawn from these results; ``str()`` says what is missing."""


# ----------------------------------------------------------------------------- runs


def mode_label(mode: Any, virtual_batch_size: Any = None) -> str:
    """The name a mode is drawn under: ghost batch norm is ``batch (ghost)``."""
    if mode == "batch" and not _missing(virtual_batch_size):
        return "batch (ghost)"
    return str(mode)


def mode_color(label: str) -> str:
    if label in MODE_COLORS:
        return MODE_COLORS[label]
    return EXTRA_COLORS[sum(map(ord, label)) % len(EXTRA_COLORS)]


def skipped_runs(runs: pd.DataFrame) -> list[str]:
    """One message per status that keeps runs out of the figures, naming the runs."""
    if runs.empty:
        return []
    messages = []
    statuses = sorted(set(runs["status"]) - set(USED_STATUSES))
    for status in statuses:
        names = sorted(
            f"{s}/{r}"
            for s, r in runs.loc[runs["status"] == status, ["sweep", "run_id"]].to_numpy()
        )
        listed = ", ".join(names[:5]) + (" ..." if len(names) > 5 else "")
        reason = SKIP_REASONS.get(status, "unknown status")
        plural = "s" if len(names) > 1 else ""
        messages.append(f"skipping {len(names)} {status} run{plural} ({reason}): {listed}")
    unreadable = runs.loc[runs["status"].isin(USED_STATUSES) & ~_has_config(runs), "run_dir"]
    if len(unreadable):
        messages.append(
            f"skipping {len(unreadable)} run(s) whose config.yaml lacks norm.mode "
            f"or batch_size: {', '.join(sorted(unreadable)[:5])}"
        )
    usable = runs.loc[_usable(runs)].sort_values("run_dir", kind="stable")
    repeated = usable.loc[usable["run_id"].duplicated(keep="first")]
    if len(repeated):
        names = [f"{s}/{r}" for s, r in repeated[["sweep", "run_id"]].to_numpy()]
        messages.append(
            f"skipping {len(repeated)} repeated run(s): the same run id (config and seed) is "
            f"already recorded in another sweep: {', '.join(names[:5])}"
        )
    return messages


def prepare_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs the figures draw (completed or diverged), with the columns they group by:
    ``mode`` (label), ``batch_size``, ``seed``, ``diverged``, ``momentum_kind``, ``sampler``."""
    if runs.empty or "status" not in runs:
        return pd.DataFrame(columns=["run_dir", "mode", "batch_size", "seed", "diverged"])
    used = runs.loc[_usable(runs)].sort_values("run_dir", kind="stable")
    used = used.drop_duplicates("run_id", keep="first").reset_index(drop=True)
    modes = _column(used, "config.norm.mode")
    ghost = _column(used, "config.norm.virtual_batch_size")
    used["mode"] = [mode_label(m, v) for m, v in zip(modes, ghost, strict=True)]
    used["batch_size"] = pd.to_numeric(_column(used, "config.batch_size")).astype("int64")
    used["seed"] = _column(used, "config.seed")
    used["diverged"] = used["status"] == "diverged"
    used["momentum_kind"] = _column(used, "config.momentum.kind", "constant").astype(object)
    used["sampler"] = _column(used, "config.data.sampler", "iid").astype(object)
    return used


def _has_config(runs: pd.DataFrame) -> pd.Series:
    return _column(runs, "config.norm.mode").notna() & _column(runs, "config.batch_size").notna()


def _usable(runs: pd.DataFrame) -> pd.Series:
    return runs["status"].isin(USED_STATUSES) & _has_config(runs)


def varied_keys(runs: pd.DataFrame, keys: Sequence[str]) -> list[str]:
    """The keys among ``keys`` that take more than one (non-null) value in ``runs``."""
    return [k for k in keys if k in runs and runs[k].dropna().astype(str).nunique() > 1]


def with_setting(runs: pd.DataFrame, exclude: Sequence[str] = ()) -> pd.DataFrame:
    """Add ``setting`` (``"lr=0.01, depth=10"``: the varied :data:`SETTING_KEYS`, "" if none)
    and ``setting_order`` (settings sorted by value, numbers numerically)."""
    out = runs.copy()
    keys = varied_keys(out, [k for k in SETTING_KEYS if k not in exclude])
    if not keys or out.empty:
        out["setting"], out["setting_order"] = "", 0
        return out
    values = list(zip(*(out[k] for k in keys), strict=True))
    out["setting"] = [
        ", ".join(
            f"{SETTING_KEYS[k]}={_fmt(v)}"
            for k, v in zip(keys, row, strict=True)
            if not _missing(v)
        )
        for row in values
    ]
    # ranked by value; keyed by text so that NaN, None and 3 vs 3.0 compare as they print
    sort_keys = {tuple(map(_fmt, row)): tuple(map(_sort_key, row)) for row in values}
    rank = {key: i for i, key in enumerate(sorted(sort_keys, key=sort_keys.__getitem__))}
    out["setting_order"] = [rank[tuple(map(_fmt, row))] for row in values]
    return out


def pooled_keys(runs: pd.DataFrame) -> list[str]:
    """Config keys that vary between runs the figures put in one group (and so average over)."""
    runs = with_setting(prepare_runs(runs))
    candidates = [
        c
        for c in runs.columns
        if c.startswith("config.") and c not in SETTING_KEYS and not c.startswith(NOT_SETTINGS)
    ]
    groups = runs.groupby(["mode", "batch_size", "setting"], dropna=False)
    return [c for c in candidates if (groups[c].agg(lambda s: s.astype(str).nunique()) > 1).any()]


def run_metrics(
    runs: pd.DataFrame, metrics: pd.DataFrame | None = None, exclude: Sequence[str] = ()
) -> pd.DataFrame:
    """Every logged row of the drawn runs, with their grouping columns (:func:`with_setting`)."""
    used = with_setting(prepare_runs(runs), exclude)
    if metrics is None:
        metrics = load_metrics(runs=used, config_keys=("run_dir",))
    columns = [
        "run_dir",
        "mode",
        "batch_size",
        "seed",
        "diverged",
        "setting",
        "setting_order",
        "momentum_kind",
        "sampler",
        "divergence_step",
    ]
    per_run = used.reindex(columns=columns)
    if "run_dir" in metrics:
        on = ["run_dir"]
    else:
        per_run = per_run.assign(sweep=used.get("sweep"), run_id=used.get("run_id"))
        on = ["sweep", "run_id"]
    drop = [c for c in per_run.columns if c in metrics and c not in on]
    merged = metrics.drop(columns=drop).merge(per_run, on=on, how="inner")
    return merged.sort_values(["run_dir", "step"], kind="stable").reset_index(drop=True)


# ----------------------------------------------------------------------------- frames


def _order(frame: pd.DataFrame, by: Sequence[str] = ()) -> pd.DataFrame:
    """Modes in :data:`MODE_ORDER`, settings by value, then ``by``."""
    rank = {m: i for i, m in enumerate(MODE_ORDER)}
    keyed = frame.assign(_mode=frame["mode"].map(lambda m: (rank.get(m, len(rank)), m)))
    keys = ["_mode", *(["setting_order"] if "setting_order" in frame else []), *by]
    keyed = keyed.sort_values(keys, kind="stable").drop(columns=["_mode"])
    return keyed.drop(columns=["setting_order"], errors="ignore").reset_index(drop=True)


def _stats(values: pd.Series) -> dict[str, float]:
    values = pd.to_numeric(values, errors="coerce")
    values = values[np.isfinite(values)]
    n = len(values)
    return {
        "mean": values.mean() if n else math.nan,
        "std": values.std(ddof=1) if n > 1 else math.nan,
        "n_used": n,
    }


def final_stats(used: pd.DataFrame, metric: str, by: Sequence[str]) -> pd.DataFrame:
    """Final ``metric`` per group of ``by`` in prepared runs: ``mean``/``std`` over non-diverged
    seeds, ``n`` runs in all, ``n_diverged`` of them diverged, ``n_used`` finite values."""
    rows = []
    for key, group in used.groupby(list(by), sort=False):
        kept = group.loc[~group["diverged"]]
        values = kept[metric] if metric in kept else pd.Series(dtype=float)
        rows.append(
            {
                **dict(zip(by, key, strict=True)),
                **_stats(values),
                "n": len(group),
                "n_diverged": int(group["diverged"].sum()),
            }
        )
    return pd.DataFrame(rows, columns=[*by, "mean", "std", "n", "n_diverged", "n_used"])


def final_by_batch_size(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Final ``metric`` per (mode, setting, batch size), see :func:`final_stats`."""
    used = with_setting(prepare_runs(runs))
    frame = final_stats(used, metric, ["mode", "batch_size", "setting", "setting_order"])
    return _order(frame, ["batch_size"])


def accuracy_vs_batch_size_frame(runs: pd.DataFrame) -> pd.DataFrame:
    """Final ``val_acc_eval`` per mode and batch size (see :func:`final_by_batch_size`)."""
    return final_by_batch_size(runs, "val_acc_eval")


def train_eval_gap_frame(runs: pd.DataFrame) -> pd.DataFrame:
    """Final ``gap_train_minus_eval`` and ``kl_train_eval`` per mode and batch size, long:
    one row per (metric, mode, setting, batch size)."""
    frames = [
        final_by_batch_size(runs, m).assign(metric=m)
        for m in ("gap_train_minus_eval", "kl_train_eval")
    ]
    frame = pd.concat(frames, ignore_index=True)
    return frame[["metric", *[c for c in frame.columns if c != "metric"]]]


def mean_over_seeds(rows: pd.DataFrame, metrics: Sequence[str], by: Sequence[str]) -> pd.DataFrame:
    """Per (``by``, metric, step): ``mean``, ``std`` and ``n`` over the non-diverged runs."""
    present = [m for m in metrics if m in rows]
    kept = rows.loc[~rows["diverged"].astype(bool)]
    columns = [*by, "setting_order", "metric", "step", "mean", "std", "n"]
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
    stats = long.groupby([*by, "setting_order", "metric", "step"], sort=False)["value"].agg(
        mean="mean",
        std="std",
        n="count",  # std: ddof=1, NaN for a single seed
    )
    return stats.reset_index()[columns]


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
    return _order(frame, [c for c in by if c != "mode" and c != "setting"] + ["metric", "step"])


def accuracy_vs_step_frame(
    runs: pd.DataFrame, metrics: pd.DataFrame | None = None, sampler: str = "iid"
) -> pd.DataFrame:
    """``val_acc_eval`` per (mode, setting, batch size, step) over the non-diverged seeds of
    the runs whose sampler is ``sampler`` ("iid": every sampler but ``non_iid``)."""

    def keep(rows: pd.DataFrame) -> pd.Series:
        non_iid = rows["sampler"] == "non_iid"
        return non_iid if sampler == "non_iid" else ~non_iid

    frame = _trace_frame(
        runs,
        metrics,
        ["val_acc_eval"],
        ["mode", "setting", "batch_size"],
        exclude=["config.data.sampler"],
        keep=keep,
    )
    return frame.drop(columns=["metric"])


def decay_schedules_frame(runs: pd.DataFrame, metrics: pd.DataFrame | None = None) -> pd.DataFrame:
    """``val_acc_eval``, ``mean_shift`` and ``std_ratio`` per (momentum kind, mode, setting,
    batch size, metric, step), over non-diverged seeds."""
    return _trace_frame(
        runs,
        metrics,
        ["val_acc_eval", "mean_shift", "std_ratio"],
        ["momentum_kind", "mode", "setting", "batch_size"],
        exclude=["config.momentum.kind"],
    )


def renorm_internals_frame(runs: pd.DataFrame, metrics: pd.DataFrame | None = None) -> pd.DataFrame:
    """For renorm runs: ``r_clip_frac``, ``d_clip_frac``, ``rmax``, ``dmax`` per (setting,
    batch size, metric, step), over non-diverged seeds."""
    frame = _trace_frame(
        runs,
        metrics,
        ["r_clip_frac", "d_clip_frac", "rmax", "dmax"],
        ["mode", "setting", "batch_size"],
        keep=lambda rows: rows["mode"] == "renorm",
    )
    return frame.drop(columns=["mode"])


def precise_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The drawn runs that recomputed precise population statistics (``eval.precise_bn``):
    those with a final ``val_acc_precise``, and diverged ones that asked for it (a mode without
    normalization layers logs none, so it is left out). ``setting`` varies over these runs only.
    """
    used = prepare_runs(runs)
    logged = pd.to_numeric(_column(used, "val_acc_precise"), errors="coerce").notna()
    asked = _column(used, "config.eval.precise_bn").map(lambda v: not _missing(v) and bool(v))
    return with_setting(used.loc[logged | (asked & used["diverged"])])


def precise_statistics_frame(runs: pd.DataFrame) -> pd.DataFrame:
    """For :func:`precise_runs`, per (mode, setting, batch size), long (one row per metric):
    final ``val_acc_eval`` (EMA population statistics), ``val_acc_precise`` (recomputed over
    ``eval.precise_batches`` training batches, same weights) and ``precise_minus_eval``, their
    difference. The difference is paired: taken per run, then averaged over non-diverged seeds,
    so its ``std`` is the spread of the per-seed differences."""
    used = precise_runs(runs)
    used["precise_minus_eval"] = pd.to_numeric(
        _column(used, "val_acc_precise"), errors="coerce"
    ) - pd.to_numeric(_column(used, "val_acc_eval"), errors="coerce")
    by = ["mode", "batch_size", "setting", "setting_order"]
    frames = [
        _order(final_stats(used, metric, by), ["batch_size"]).assign(metric=metric)
        for metric in ("val_acc_eval", "val_acc_precise", "precise_minus_eval")
    ]
    frame = pd.concat(frames, ignore_index=True)
    return frame[["metric", *[c for c in frame.columns if c != "metric"]]]


def ghost_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The drawn ``batch`` runs at the optimizer batch sizes where some run set
    ``norm.virtual_batch_size``, with ``virtual_batch_size`` (the batch size itself for plain
    BN, which is mode ``batch``; ghost runs are ``batch (ghost)``). ``setting`` varies over
    these runs only, the virtual batch size excluded."""
    used = prepare_runs(runs)
    virtual = pd.to_numeric(_column(used, "config.norm.virtual_batch_size"), errors="coerce")
    batch = _column(used, "config.norm.mode") == "batch"
    sizes = set(used.loc[batch & virtual.notna(), "batch_size"])
    keep = batch & used["batch_size"].isin(sizes)
    used = used.loc[keep].assign(
        virtual_batch_size=virtual[keep].fillna(used["batch_size"]).astype("int64")
    )
    return with_setting(used, exclude=["config.norm.virtual_batch_size"])


def ghost_batch_frame(runs: pd.DataFrame) -> pd.DataFrame:
    """For :func:`ghost_runs`: final ``val_acc_eval`` and ``val_acc_train_mode`` per (setting,
    optimizer batch size, virtual batch size, mode), long (one row per metric); see
    :func:`final_stats`."""
    used = ghost_runs(runs)
    by = ["setting", "setting_order", "batch_size", "virtual_batch_size", "mode"]
    rank = {m: i for i, m in enumerate(MODE_ORDER)}
    frames = []
    for metric in ("val_acc_eval", "val_acc_train_mode"):
        frame = final_stats(used, metric, by).assign(metric=metric)
        frame["_mode"] = frame["mode"].map(lambda m: rank.get(m, len(rank)))
        frame = frame.sort_values([*by[1:4], "_mode"], kind="stable")
        frames.append(frame.drop(columns=["_mode", "setting_order"]))
    frame = pd.concat(frames, ignore_index=True)
    return frame[["metric", *[c for c in frame.columns if c != "metric"]]]


def diverged_traces_frame(runs: pd.DataFrame, metrics: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every logged row of the diverged runs, with ``divergence_step`` and grouping columns."""
    rows = run_metrics(runs, metrics)
    if rows.empty:
        return rows
    return rows.loc[rows["diverged"].astype(bool)].reset_index(drop=True)


def divergence_frame(runs: pd.DataFrame) -> pd.DataFrame:
    """Per varied key of :data:`DIVERGENCE_KEYS`, value and mode: ``n`` runs, ``n_diverged``,
    ``fraction``. Other keys are pooled, so each key's panel is a marginal."""
    used = prepare_runs(runs)
    rows = []
    for key in varied_keys(used, list(DIVERGENCE_KEYS)):
        for (mode, value), group in used.groupby(["mode", key], sort=False, dropna=False):
            n_div = int(group["diverged"].sum())
            rows.append(
                {
                    "key": key,
                    "value": value,
                    "mode": mode,
                    "n": len(group),
                    "n_diverged": n_div,
                    "fraction": n_div / len(group),
                }
            )
    frame = pd.DataFrame(rows, columns=["key", "value", "mode", "n", "n_diverged", "fraction"])
    if frame.empty:
        return frame
    frame["_value"] = frame["value"].map(_sort_key)
    frame["setting_order"] = 0
    return _order(frame, ["key", "_value"]).drop(columns=["_value"])


def summary_table(runs: pd.DataFrame, metrics: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per (mode, batch size, varied settings): ``n`` runs, ``n_diverged``, ``diverged_frac``,
    and ``<metric>_mean``/``<metric>_std`` of :data:`SUMMARY_METRICS` over non-diverged seeds;
    also of :data:`PRECISE_METRICS` when some run logged ``val_acc_precise`` (groups without
    it get NaN). ``precise_seconds`` is each run's mean over its evaluations, read from
    ``metrics`` (every logged row, as for :func:`run_metrics`; loaded when not given)."""
    used = with_setting(prepare_runs(runs))
    settings = varied_keys(used, list(SETTING_KEYS))
    names = list(SUMMARY_METRICS)
    if pd.to_numeric(_column(used, "val_acc_precise"), errors="coerce").notna().any():
        names += PRECISE_METRICS
        per_run = _mean_per_run(runs, metrics, "precise_seconds")
        used["precise_seconds"] = used["run_dir"].map(per_run)
    rows = []
    for _, group in used.groupby(["mode", "setting", "setting_order", "batch_size"], sort=False):
        first = group.iloc[0]
        row = {
            "mode": first["mode"],
            "batch_size": first["batch_size"],
            "setting_order": first["setting_order"],
        }
        row.update({SETTING_KEYS[k]: first[k] for k in settings})
        kept = group.loc[~group["diverged"]]
        for metric in names:
            stats = _stats(kept[metric] if metric in kept else pd.Series(dtype=float))
            row[f"{metric}_mean"], row[f"{metric}_std"] = stats["mean"], stats["std"]
        n_div = int(group["diverged"].sum())
        row.update({"n": len(group), "n_diverged": n_div, "diverged_frac": n_div / len(group)})
        rows.append(row)
    columns = [
        "mode",
        "batch_size",
        "setting_order",
        *(SETTING_KEYS[k] for k in settings),
        "n",
        "n_diverged",
        "diverged_frac",
        *(f"{m}_{s}" for m in names for s in ("mean", "std")),
    ]
    return _order(pd.DataFrame(rows, columns=columns), ["batch_size"])


def _mean_per_run(runs: pd.DataFrame, metrics: pd.DataFrame | None, metric: str) -> pd.Series:
    """Each drawn run's mean of the finite logged values of ``metric``, by ``run_dir``."""
    rows = run_metrics(runs, metrics)
    if metric not in rows:
        return pd.Series(dtype=float)
    values = pd.to_numeric(rows[metric], errors="coerce")
    return values.where(np.isfinite(values)).groupby(rows["run_dir"]).mean()


# ----------------------------------------------------------------------------- tables


def _pm(mean: float, std: float, scale: float, digits: int, pm: str) -> str:
    if _missing(mean):
        return "–"
    text = f"{mean * scale:.{digits}f}"
    return text if _missing(std) else f"{text}{pm}{std * scale:.{digits}f}"


def summary_display(table: pd.DataFrame, pm: str = " ± ") -> pd.DataFrame:
    """``table`` as text: accuracies and gaps in %, ``mean ± std``, diverged as ``k/n``."""
    out = pd.DataFrame(index=table.index)
    fixed = {"mode", "batch_size", "n", "n_diverged", "diverged_frac"}
    stats = {c.rsplit("_", 1)[0] for c in table.columns if c.endswith(("_mean", "_std"))}
    for column in table.columns:
        if column in fixed or column.endswith(("_mean", "_std")):
            continue
        out[column] = table[column].map(_fmt)
    out.insert(0, "batch size", table["batch_size"].astype(str))
    out.insert(0, "mode", table["mode"].astype(str))
    for metric in (*SUMMARY_METRICS, *PRECISE_METRICS):
        if metric not in stats:
            continue
        scale, digits = (100.0, 1) if metric in PERCENT else (1.0, 3)
        out[LABELS[metric]] = [
            _pm(m, s, scale, digits, pm)
            for m, s in zip(table[f"{metric}_mean"], table[f"{metric}_std"], strict=True)
        ]
    out["diverged"] = [f"{k}/{n}" for k, n in zip(table["n_diverged"], table["n"], strict=True)]
    return out


def _text_columns(table: pd.DataFrame) -> int:
    """Mode, batch size and the setting columns: the left-aligned ones."""
    return 2 + sum(c in SETTING_KEYS.values() for c in table.columns)


def to_markdown(table: pd.DataFrame) -> str:
    shown = summary_display(table)
    left = _text_columns(table)
    lines = [
        "| " + " | ".join(shown.columns) + " |",
        "|" + "|".join("---" if i < left else "---:" for i in range(len(shown.columns))) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in shown.astype(str).to_numpy().tolist()]
    caption = (
        f"Final metrics, {BAND_TEXT.replace('1 std', 'sample std')}; "
        "'diverged': runs that diverged of all runs."
    )
    return caption + "\n\n" + "\n".join(lines) + "\n"


def _tex(text: str) -> str:
    for char, escaped in (
        ("\\", r"\textbackslash{}"),
        ("&", r"\&"),
        ("%", r"\%"),
        ("_", r"\_"),
        ("#", r"\#"),
        ("‖", r"$\|$"),
        ("−", "$-$"),
        ("μ", r"$\mu$"),
        ("σ", r"$\sigma$"),
        ("–", "--"),
    ):
        text = text.replace(char, escaped)
    return text


def to_latex(table: pd.DataFrame) -> str:
    """A booktabs ``tabular`` (needs ``\\usepackage{booktabs}``)."""
    shown = summary_display(table, pm=r" $\pm$ ")
    left = _text_columns(table)
    spec = "l" * left + "r" * (len(shown.columns) - left)
    lines = [
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        " & ".join(_tex(c) for c in shown.columns) + r" \\",
        r"\midrule",
    ]
    for row in shown.astype(str).to_numpy().tolist():
        cells = [_tex(c) if r"$\pm$" not in c else c.replace("–", "--") for c in row]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def write_summary(table: pd.DataFrame, out: Path) -> list[Path]:
    paths = [out / "summary.md", out / "summary.tex", out / "summary.csv"]
    paths[0].write_text(to_markdown(table), encoding="utf-8")
    paths[1].write_text(to_latex(table), encoding="utf-8")
    table.to_csv(paths[2], index=False, float_format="%.6g", lineterminator="\n")
    return paths


# ----------------------------------------------------------------------------- drawing


@contextlib.contextmanager
def style() -> Iterator[None]:
    """Matplotlib's defaults plus :data:`STYLE`, whatever the user's matplotlibrc says."""
    with matplotlib.rc_context():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", matplotlib.MatplotlibDeprecationWarning)
            matplotlib.rcdefaults()
        matplotlib.rcParams.update(STYLE)
        yield


def styled(function: Callable[..., Figure]) -> Callable[..., Figure]:
    """Build the figure under :func:`style`: artists take their fonts and sizes when created."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Figure:
        with style():
            return function(*args, **kwargs)

    return wrapper


def new_figure(
    panels: int, rows: int = 1, height: float = PANEL_HEIGHT, **subplots: Any
) -> tuple[Figure, np.ndarray]:
    """A figure of ``rows`` × ``panels`` axes, :data:`PANEL_WIDTH` wide each (Agg canvas)."""
    figure = Figure(figsize=(PANEL_WIDTH * panels, height * rows), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, panels, squeeze=False, **subplots)
    return figure, axes


def _metadata(suffix: str) -> dict[str, Any]:
    return {
        ".png": {"Software": None},
        ".pdf": {"CreationDate": None, "ModDate": None},
        ".svg": {"Date": None},
    }.get(suffix, {})


def save_figure(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with style():
        # "tight" grows the canvas to hold the legend placed below the panels
        figure.savefig(
            path, dpi=DPI, metadata=_metadata(path.suffix), bbox_inches="tight", pad_inches=0.03
        )
    return path


def _scale(metric: str) -> float:
    return 100.0 if metric in PERCENT else 1.0


def _linestyle(index: int) -> Any:
    return LINESTYLES[index % len(LINESTYLES)]


def _variant_styles(rows: pd.DataFrame, columns: Sequence[str]) -> dict[tuple, Any]:
    """One line style per distinct combination of ``columns`` in ``rows`` (which carry
    ``setting_order``), settings by value, then batch size."""
    order = ["setting_order", *(["batch_size"] if "batch_size" in columns else [])]
    distinct = rows.drop_duplicates(list(columns)).sort_values(order, kind="stable")
    keys = map(tuple, distinct[list(columns)].to_numpy().tolist())
    return {key: _linestyle(i) for i, key in enumerate(keys)}


def _variant_text(values: Sequence[Any], columns: Sequence[str]) -> str:
    parts = []
    for column, value in zip(columns, values, strict=True):
        if column == "batch_size":
            parts.append(f"batch {value}")
        elif value not in ("", None):
            parts.append(str(value))
    return ", ".join(parts)


def _legend(figure: Figure, handles: list[Any]) -> None:
    """One legend for the figure, below the panels, as many columns as the width holds."""
    if not handles:
        return
    longest = max(len(h.get_label()) for h in handles)
    entry_width = 0.45 + 0.055 * longest  # inches at 7 pt, handle included
    columns = max(1, min(len(handles), int(figure.get_figwidth() // entry_width)))
    figure.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        ncols=columns,
        borderaxespad=0.0,
    )


def _step_axis(ax: Axes) -> None:
    ax.set_xlabel("training step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 2.5, 5, 10]))


def _mode_handles(modes: Sequence[str], marker: bool = False) -> list[Line2D]:
    return [
        Line2D(
            [], [], color=mode_color(m), marker=MODE_MARKERS.get(m, "o") if marker else "", label=m
        )
        for m in dict.fromkeys(modes)
    ]


def _style_handles(styles: dict[tuple, Any], columns: Sequence[str]) -> list[Line2D]:
    if len(styles) < 2:
        return []
    return [
        Line2D([], [], color="0.35", linestyle=ls, label=_variant_text(key, columns))
        for key, ls in styles.items()
    ]


def _band_handles(diverged: bool) -> list[Any]:
    handles: list[Any] = [Patch(color="0.6", alpha=0.3, label=BAND_TEXT)]
    if diverged:
        handles.append(
            Line2D(
                [],
                [],
                color="0.35",
                linewidth=0.6,
                marker="x",
                label="diverged run (ends at divergence)",
            )
        )
    return handles


def _draw_mean(ax: Axes, rows: pd.DataFrame, color: str, linestyle: Any, scale: float) -> None:
    step = rows["step"].to_numpy(float)
    mean, std = rows["mean"].to_numpy(float) * scale, rows["std"].to_numpy(float) * scale
    ax.plot(step, mean, color=color, linestyle=linestyle)
    ax.fill_between(step, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)


def _draw_diverged(ax: Axes, rows: pd.DataFrame, metric: str, linestyle: Any, scale: float) -> None:
    for _, run in rows.groupby("run_dir", sort=True):
        values = _finite(run[metric]) * scale
        step = run["step"].to_numpy(float)
        color = mode_color(run["mode"].iloc[0])
        ax.plot(step, values, color=color, linestyle=linestyle, linewidth=0.6, alpha=0.8)
        last = np.flatnonzero(np.isfinite(values))
        if last.size:
            ax.plot(step[last[-1]], values[last[-1]], color=color, marker="x", markersize=5)


def _finite(values: pd.Series) -> np.ndarray:
    array = pd.to_numeric(values, errors="coerce").to_numpy(float)
    return np.where(np.isfinite(array), array, np.nan)


def _grid(count: int, max_columns: int = 4) -> tuple[int, int]:
    columns = min(count, max_columns)
    return columns, math.ceil(count / columns)


def _hide_unused(axes: np.ndarray, used: int) -> None:
    for ax in axes.flat[used:]:
        ax.set_visible(False)


# ----------------------------------------------------------------------------- figures


@styled
def plot_accuracy_vs_step(
    runs: pd.DataFrame, metrics: pd.DataFrame | None = None, sampler: str = "iid"
) -> Figure:
    """Validation accuracy (population statistics) vs step, a panel per batch size."""
    rows = run_metrics(runs, metrics, exclude=["config.data.sampler"])
    non_iid = rows["sampler"] == "non_iid" if not rows.empty else pd.Series(dtype=bool)
    rows = rows.loc[non_iid if sampler == "non_iid" else ~non_iid]
    what = "non-i.i.d. (config.data.sampler=non_iid)" if sampler == "non_iid" else "i.i.d."
    if rows.empty:
        raise Skip(f"no {what} runs")
    if "val_acc_eval" not in rows or rows["val_acc_eval"].isna().all():
        raise Skip("no run logged val_acc_eval")
    frame = accuracy_vs_step_frame(runs, metrics, sampler)
    diverged = rows.loc[rows["diverged"].astype(bool)]
    sizes = sorted(set(rows["batch_size"]))
    columns, grid_rows = _grid(len(sizes))
    figure, axes = new_figure(columns, grid_rows, sharey=True)
    styles = _variant_styles(rows, ["setting"])
    for ax, size in zip(axes.flat, sizes, strict=False):
        for (mode, setting), line in frame.loc[frame["batch_size"] == size].groupby(
            ["mode", "setting"], sort=False
        ):
            _draw_mean(ax, line, mode_color(mode), styles[(setting,)], 100.0)
        for setting, runs_ in diverged.loc[diverged["batch_size"] == size].groupby("setting"):
            _draw_diverged(ax, runs_, "val_acc_eval", styles[(setting,)], 100.0)
        ax.set_title(
            f"batch size {size}" + (", non-i.i.d. batches" if sampler == "non_iid" else "")
        )
        _step_axis(ax)
    for ax in axes[:, 0]:
        ax.set_ylabel(LABELS["val_acc_eval"])
    _hide_unused(axes, len(sizes))
    handles = (
        _mode_handles(_order(rows.drop_duplicates("mode"))["mode"])
        + _style_handles(styles, ["setting"])
        + _band_handles(not diverged.empty)
    )
    _legend(figure, handles)
    return figure


def _draw_vs_batch_size(
    ax: Axes, frame: pd.DataFrame, metric: str, styles: dict[tuple, Any]
) -> None:
    scale = _scale(metric)
    for (mode, setting), line in frame.groupby(["mode", "setting"], sort=False):
        color, marker = mode_color(mode), MODE_MARKERS.get(mode, "o")
        x, mean = line["batch_size"].to_numpy(float), line["mean"].to_numpy(float) * scale
        ax.errorbar(
            x,
            mean,
            yerr=line["std"].to_numpy(float) * scale,
            color=color,
            linestyle=styles[(setting,)],
            marker=marker,
            capsize=2,
            markersize=4,
        )
        _mark_diverged(ax, line, "batch_size", scale, color, marker)
    _log2_axis(ax, frame["batch_size"])
    ax.set_xlabel("batch size (examples per step)")
    ax.set_ylabel(LABELS[metric])


def _mark_diverged(
    ax: Axes, points: pd.DataFrame, x: str, scale: float, color: str, marker: str
) -> None:
    """``k/n div.`` at each point (x from column ``x``) where some seeds diverged: a hollow
    marker on the mean of the rest, or a × on the x axis when every seed diverged."""
    for _, point in points.loc[points["n_diverged"] > 0].iterrows():
        text = f"{point['n_diverged']}/{point['n']} div."
        if _missing(point["mean"]):  # every seed diverged: a × on the x axis
            ax.plot(
                point[x],
                0.03,
                marker="x",
                color=color,
                markersize=6,
                transform=ax.get_xaxis_transform(),
                clip_on=False,
            )
            ax.annotate(
                text,
                (point[x], 0.03),
                xycoords=ax.get_xaxis_transform(),
                xytext=(3, 3),
                textcoords="offset points",
                fontsize=6,
                color=color,
            )
            continue
        y = point["mean"] * scale
        ax.plot(
            point[x],
            y,
            marker=marker,
            markersize=7,
            markerfacecolor="white",
            markeredgecolor=color,
            linestyle="",
        )
        ax.annotate(
            text,
            (point[x], y),
            xytext=(3, -9),
            textcoords="offset points",
            fontsize=6,
            color=color,
        )


def _log2_axis(ax: Axes, sizes: pd.Series) -> None:
    """log2 x axis with integer ticks at the powers of two from 1 to 128 (further if needed)."""
    low = min(1, int(sizes.min())) if len(sizes) else 1
    high = max(128, int(sizes.max())) if len(sizes) else 128
    ticks = [2**k for k in range(math.floor(math.log2(low)), math.ceil(math.log2(high)) + 1)]
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlim(ticks[0] / 1.4, ticks[-1] * 1.4)


def _batch_size_figure(runs: pd.DataFrame, frame: pd.DataFrame, metrics: Sequence[str]) -> Figure:
    figure, axes = new_figure(len(metrics))
    styles = _variant_styles(with_setting(prepare_runs(runs)), ["setting"])
    for ax, metric in zip(axes.flat, metrics, strict=True):
        part = frame.loc[frame["metric"] == metric] if "metric" in frame else frame
        _draw_vs_batch_size(ax, part, metric, styles)
        if metric == "gap_train_minus_eval":
            ax.axhline(0.0, color="0.5", linewidth=0.6)
        if metric == "kl_train_eval":
            # spans orders of magnitude (renorm at batch size 1 reaches 1e5 nats); KL >= 0
            ax.set_yscale("log", nonpositive="clip")
    handles = _mode_handles(frame["mode"], marker=True) + _style_handles(styles, ["setting"])
    _legend(figure, handles + _final_handles())
    return figure


def _final_handles() -> list[Line2D]:
    """Legend entries for final values drawn with :func:`_mark_diverged` and error bars."""
    return [
        Line2D(
            [],
            [],
            color="0.35",
            marker="o",
            markerfacecolor="white",
            linestyle="",
            markersize=7,
            label="some seeds diverged (k/n): mean of the rest",
        ),
        Line2D(
            [],
            [],
            color="0.35",
            marker="|",
            linestyle="",
            label="error bar: ±1 std over non-diverged seeds",
        ),
    ]


@styled
def plot_accuracy_vs_batch_size(runs: pd.DataFrame, metrics: pd.DataFrame | None = None) -> Figure:
    frame = accuracy_vs_batch_size_frame(runs)
    if frame.empty or frame["n_used"].sum() + frame["n_diverged"].sum() == 0:
        raise Skip("no completed or diverged run has a final val_acc_eval")
    return _batch_size_figure(runs, frame, ["val_acc_eval"])


@styled
def plot_train_eval_gap(runs: pd.DataFrame, metrics: pd.DataFrame | None = None) -> Figure:
    frame = train_eval_gap_frame(runs)
    if frame.empty or frame["n_used"].sum() == 0:
        raise Skip("no run has a final gap_train_minus_eval or kl_train_eval")
    return _batch_size_figure(runs, frame, ["gap_train_minus_eval", "kl_train_eval"])


@styled
def plot_divergence(runs: pd.DataFrame, metrics: pd.DataFrame | None = None) -> Figure:
    """Fraction of runs diverged: a heatmap of mode × value per varied key."""
    frame = divergence_frame(runs)
    if frame.empty:
        raise Skip("no run varies lr, depth or momentum schedule")
    keys = list(dict.fromkeys(frame["key"]))
    modes = list(dict.fromkeys(_order(frame.drop_duplicates("mode"))["mode"]))
    figure, axes = new_figure(len(keys), height=0.9 + 0.3 * len(modes))
    image = None
    for ax, key in zip(axes.flat, keys, strict=True):
        part = frame.loc[frame["key"] == key]
        values = sorted(dict.fromkeys(part["value"]), key=_sort_key)
        grid = np.full((len(modes), len(values)), np.nan)
        for _, cell in part.iterrows():
            i, j = modes.index(cell["mode"]), values.index(cell["value"])
            grid[i, j] = cell["fraction"]
            ax.text(
                j,
                i,
                f"{cell['n_diverged']}/{cell['n']}",
                ha="center",
                va="center",
                fontsize=6,
                color="black" if cell["fraction"] > 0.5 else "white",
            )
        image = ax.imshow(grid, vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_xticks(range(len(values)), [_fmt(v) for v in values])
        ax.set_yticks(range(len(modes)), modes)
        ax.set_xlabel(DIVERGENCE_KEYS[key])
        ax.grid(False)
    figure.colorbar(
        image,
        ax=axes.ravel().tolist(),
        shrink=0.9,
        label="fraction of runs diverged (k/n in cells)",
    )
    return figure


@styled
def plot_divergence_traces(runs: pd.DataFrame, metrics: pd.DataFrame | None = None) -> Figure:
    """Loss and parameter norm (log y) of the diverged runs, the divergence step dotted."""
    rows = diverged_traces_frame(runs, metrics)
    if rows.empty:
        raise Skip("no run diverged")
    names = [m for m in ("loss", "param_norm") if m in rows]
    if not names:
        raise Skip("the diverged runs logged neither loss nor param_norm")
    figure, axes = new_figure(len(names), sharex=True)
    blown = False
    for ax, metric in zip(axes.flat, names, strict=True):
        ax.set_yscale("log")
        for _, run in rows.groupby("run_dir", sort=True):
            blown |= _draw_blow_up(ax, run, metric)
        # plain numbers (8.6, 1e+03), also on the minor ticks of a range under a decade
        ax.yaxis.set_major_formatter(LogFormatter())
        ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.4)))
        _step_axis(ax)
        ax.set_ylabel(LABELS[metric] + " (log scale)")
    handles = _mode_handles(_order(rows.drop_duplicates("mode"))["mode"])
    handles.append(Line2D([], [], color="0.35", linestyle=":", label="divergence step"))
    if blown:
        handles.append(
            Line2D(
                [],
                [],
                color="0.35",
                marker="^",
                linestyle="",
                label="non-finite value (drawn at the top)",
            )
        )
    _legend(figure, handles)
    return figure


def _draw_blow_up(ax: Axes, run: pd.DataFrame, metric: str) -> bool:
    """One diverged run's ``metric``; a non-finite last value (the divergence row) is a ▲ at
    the top of the axes, the divergence step a dotted line."""
    color = mode_color(run["mode"].iloc[0])
    step = run["step"].to_numpy(float)
    values = _finite(run[metric])
    values[values <= 0] = np.nan
    ax.plot(step, values, color=color, linewidth=0.8, marker=".", markersize=3)
    blown = bool(np.isnan(values[-1]))
    if blown:
        ax.plot(
            step[-1],
            0.97,
            marker="^",
            color=color,
            transform=ax.get_xaxis_transform(),
            clip_on=False,
        )
    divergence_step = run["divergence_step"].iloc[0]
    if not _missing(divergence_step):
        ax.axvline(float(divergence_step), color=color, linestyle=":", linewidth=0.8)
    return blown


@styled
def plot_decay_schedules(runs: pd.DataFrame, metrics: pd.DataFrame | None = None) -> Figure:
    """Accuracy, mean shift and std ratio over steps; a column per momentum schedule."""
    used = prepare_runs(runs)
    kinds = sorted(set(used["momentum_kind"].dropna())) if not used.empty else []
    if len(kinds) < 2:
        raise Skip("all runs use the same momentum schedule" + (f" ({kinds[0]})" if kinds else ""))
    frame = decay_schedules_frame(runs, metrics)
    rows = run_metrics(runs, metrics, exclude=["config.momentum.kind"])
    diverged = rows.loc[rows["diverged"].astype(bool)]
    names = ["val_acc_eval", "mean_shift", "std_ratio"]
    figure, axes = new_figure(len(kinds), len(names), height=1.8, sharex="col", sharey="row")
    variant = ["batch_size", "setting"]
    styles = _variant_styles(rows, variant)
    for col, kind in enumerate(kinds):
        for row, metric in enumerate(names):
            ax = axes[row, col]
            part = frame.loc[(frame["momentum_kind"] == kind) & (frame["metric"] == metric)]
            for (mode, setting, size), line in part.groupby(
                ["mode", "setting", "batch_size"], sort=False
            ):
                _draw_mean(ax, line, mode_color(mode), styles[(size, setting)], _scale(metric))
            bad = diverged.loc[diverged["momentum_kind"] == kind]
            if metric in bad:
                for key, runs_ in bad.groupby(variant, sort=False):
                    _draw_diverged(ax, runs_, metric, styles[tuple(key)], _scale(metric))
            if metric == "std_ratio":
                ax.axhline(1.0, color="0.5", linewidth=0.6)
            if col == 0:
                ax.set_ylabel(LABELS[metric])
        axes[0, col].set_title(f"momentum schedule: {kind}")
        _step_axis(axes[-1, col])
    handles = (
        _mode_handles(_order(rows.drop_duplicates("mode"))["mode"])
        + _style_handles(styles, variant)
        + _band_handles(not diverged.empty)
    )
    _legend(figure, handles)
    return figure


@styled
def plot_renorm_internals(runs: pd.DataFrame, metrics: pd.DataFrame | None = None) -> Figure:
    """Fraction of r and d clipped over training, rmax/dmax on a twin axis."""
    rows = run_metrics(runs, metrics)
    rows = rows.loc[rows["mode"] == "renorm"] if not rows.empty else rows
    if rows.empty:
        raise Skip("no renorm run")
    if "r_clip_frac" not in rows or rows["r_clip_frac"].isna().all():
        raise Skip("the renorm runs logged no r_clip_frac")
    frame = renorm_internals_frame(runs, metrics)
    diverged = rows.loc[rows["diverged"].astype(bool)]
    variant = ["batch_size", "setting"]
    styles = _variant_styles(rows, variant)
    figure, axes = new_figure(2)
    color = mode_color("renorm")
    for ax, (clip, bound) in zip(
        axes.flat, (("r_clip_frac", "rmax"), ("d_clip_frac", "dmax")), strict=True
    ):
        twin = ax.twinx()
        for (size, setting), line in frame.groupby(variant, sort=False):
            style_ = styles[(size, setting)]
            part = line.loc[line["metric"] == clip]
            if not part.empty:
                _draw_mean(ax, part, color, style_, 100.0)
            schedule = line.loc[line["metric"] == bound]
            twin.plot(
                schedule["step"].to_numpy(float),
                schedule["mean"].to_numpy(float),
                color="0.2",
                linestyle=style_,
                linewidth=0.8,
            )
        if clip in diverged:
            for key, runs_ in diverged.groupby(variant, sort=False):
                _draw_diverged(ax, runs_, clip, styles[tuple(key)], 100.0)
        _step_axis(ax)
        ax.set_ylabel(LABELS[clip], color=color)
        twin.set_ylabel(f"{bound} (schedule)", color="0.2")
        twin.grid(False)
        twin.spines["right"].set_visible(True)
    handles = [
        Line2D([], [], color=color, label="fraction clipped (left axis)"),
        Line2D([], [], color="0.2", linewidth=0.8, label="rmax / dmax (right axis)"),
        *_style_handles(styles, variant),
        *_band_handles(not diverged.empty),
    ]
    _legend(figure, handles)
    return figure


def _errorbars(
    ax: Axes,
    points: pd.DataFrame,
    x: str,
    scale: float,
    color: str,
    marker: str,
    linestyle: Any,
    **style: Any,
) -> None:
    ax.errorbar(
        points[x].to_numpy(float),
        points["mean"].to_numpy(float) * scale,
        yerr=points["std"].to_numpy(float) * scale,
        color=color,
        linestyle=linestyle,
        marker=marker,
        capsize=2,
        **{"markersize": 4, **style},
    )


def _metric_handles(first: str, second: str) -> list[Line2D]:
    """Legend entries for the solid first and dashed, half-filled second metric."""
    return [
        Line2D([], [], color="0.35", marker="o", label=first),
        Line2D([], [], color="0.35", marker="o", linestyle="--", label=second, **SECOND),
    ]


def _settings(used: pd.DataFrame) -> list[str]:
    """The distinct ``setting`` values of ``used``, by value."""
    return list(dict.fromkeys(used.sort_values("setting_order", kind="stable")["setting"]))


@styled
def plot_precise_statistics(runs: pd.DataFrame, metrics: pd.DataFrame | None = None) -> Figure:
    """Final accuracy with EMA (solid) and precisely recomputed (dashed) population statistics
    against batch size, and their paired difference; a row of panels per setting."""
    used = precise_runs(runs)
    if used.empty:
        raise Skip("no run logged val_acc_precise (eval.precise_bn=true)")
    frame = precise_statistics_frame(runs)
    settings = _settings(used)
    figure, axes = new_figure(2, len(settings))
    for (accuracy, difference), setting in zip(axes, settings, strict=True):
        part = frame.loc[frame["setting"] == setting]
        for mode, line in part.groupby("mode", sort=False):
            color, marker = mode_color(mode), MODE_MARKERS.get(mode, "o")
            for ax, metric, linestyle, style_ in (
                (accuracy, "val_acc_eval", "-", {}),
                (accuracy, "val_acc_precise", "--", SECOND),
                (difference, "precise_minus_eval", "-", {}),
            ):
                points = line.loc[line["metric"] == metric]
                _errorbars(ax, points, "batch_size", 100.0, color, marker, linestyle, **style_)
                if metric != "val_acc_precise":  # once per panel
                    _mark_diverged(ax, points, "batch_size", 100.0, color, marker)
        difference.axhline(0.0, color="0.5", linewidth=0.6)
        for ax, metric in ((accuracy, "val_acc_eval"), (difference, "precise_minus_eval")):
            _log2_axis(ax, part["batch_size"])
            ax.set_xlabel("batch size (examples per step)")
            ax.set_ylabel(LABELS[metric])
            if setting:
                ax.set_title(setting)
    batches = _column(used, "config.eval.precise_batches").dropna().unique()
    over = f"{_fmt(batches[0])} training batches" if len(batches) == 1 else "K training batches"
    handles = [
        *_mode_handles(frame["mode"], marker=True),
        *_metric_handles(
            "EMA population statistics (val_acc_eval)",
            f"recomputed over {over} (val_acc_precise)",
        ),
        *_final_handles(),
    ]
    _legend(figure, handles)
    return figure


@styled
def plot_ghost_batch(runs: pd.DataFrame, metrics: pd.DataFrame | None = None) -> Figure:
    """Final eval-mode (solid) and train-mode (dashed) accuracy against the virtual batch size
    of ghost batch norm, a panel per optimizer batch size and a row per setting; plain BN
    (mode ``batch``) is the point at virtual = optimizer batch size."""
    used = ghost_runs(runs)
    if not (used["mode"] == "batch (ghost)").any():
        raise Skip("no batch run sets norm.virtual_batch_size (ghost batch norm)")
    frame = ghost_batch_frame(runs)
    settings, sizes = _settings(used), sorted(set(used["batch_size"]))
    figure, axes = new_figure(len(sizes), len(settings), sharey=True)
    ghost = mode_color("batch (ghost)")
    for row, setting in zip(axes, settings, strict=True):
        labelled = False
        for ax, size in zip(row, sizes, strict=True):
            part = frame.loc[(frame["setting"] == setting) & (frame["batch_size"] == size)]
            if part.empty:
                ax.set_visible(False)
                continue
            for metric, linestyle, style_ in (
                ("val_acc_eval", "-", {}),
                ("val_acc_train_mode", "--", SECOND),
            ):
                points = part.loc[part["metric"] == metric]
                drawn = points.loc[points["mean"].notna()]
                ax.plot(
                    drawn["virtual_batch_size"].to_numpy(float),
                    drawn["mean"].to_numpy(float) * 100.0,
                    color=ghost,
                    linestyle=linestyle,
                )
                for mode, group in points.groupby("mode", sort=False):
                    color, marker = mode_color(mode), MODE_MARKERS.get(mode, "o")
                    _errorbars(
                        ax, group, "virtual_batch_size", 100.0, color, marker, "none", **style_
                    )
                    if metric == "val_acc_eval":  # once per panel
                        _mark_diverged(ax, group, "virtual_batch_size", 100.0, color, marker)
            _log2_axis(ax, part["virtual_batch_size"])
            ax.set_title(f"batch size {size}" + (f", {setting}" if setting else ""))
            ax.set_xlabel("virtual batch size (examples per statistics)")
            if not labelled:
                ax.set_ylabel(LABELS["val_acc_eval"])
                labelled = True
    handles = [
        Line2D(
            [],
            [],
            color=ghost,
            marker=MODE_MARKERS["batch (ghost)"],
            label="batch (ghost): statistics per virtual batch",
        )
    ]
    if (used["mode"] == "batch").any():
        handles.append(
            Line2D(
                [],
                [],
                color=mode_color("batch"),
                marker=MODE_MARKERS["batch"],
                linestyle="",
                label="batch: plain BN (virtual = batch size)",
            )
        )
    handles += [
        *_metric_handles(
            "eval mode (population statistics)", "train mode (virtual-batch statistics)"
        ),
        *_final_handles(),
    ]
    _legend(figure, handles)
    return figure


@styled
def plot_accuracy_vs_step_non_iid(
    runs: pd.DataFrame, metrics: pd.DataFrame | None = None
) -> Figure:
    return plot_accuracy_vs_step(runs, metrics, sampler="non_iid")


FIGURES: dict[str, Callable[[pd.DataFrame, pd.DataFrame | None], Figure]] = {
    "accuracy_vs_step": plot_accuracy_vs_step,
    "accuracy_vs_step_non_iid": plot_accuracy_vs_step_non_iid,
    "accuracy_vs_batch_size": plot_accuracy_vs_batch_size,
    "train_eval_gap": plot_train_eval_gap,
    "divergence": plot_divergence,
    "divergence_traces": plot_divergence_traces,
    "decay_schedules": plot_decay_schedules,
    "renorm_internals": plot_renorm_internals,
    "precise_statistics": plot_precise_statistics,
    "ghost_batch": plot_ghost_batch,
}


# ----------------------------------------------------------------------------- one run


def run_figure(metrics: pd.DataFrame, path: Path) -> Path:
    """A small figure of one run from its metrics frame (``metrics.csv`` as read by pandas):
    training loss, validation accuracy with population vs batch statistics, and the mean shift
    of the batch statistics, against step. Written to ``path`` (format from its suffix, PNG if
    none); returns the path written."""
    path = Path(path)
    path = path if path.suffix else path.with_suffix(".png")
    mode = (
        metrics["config.norm.mode"].iloc[0]
        if "config.norm.mode" in metrics and len(metrics)
        else "batch"
    )
    color = mode_color(str(mode))
    step = pd.to_numeric(metrics.get("step", pd.Series(range(len(metrics))))).to_numpy(float)
    with style():
        figure, axes = new_figure(3, height=2.0)
        panels = [
            ("loss", [("loss", "-", "training loss")]),
            (
                "val_acc_eval",
                [
                    ("val_acc_eval", "-", "eval mode (population stats)"),
                    ("val_acc_train_mode", "--", "train mode (batch stats)"),
                ],
            ),
            ("mean_shift", [("mean_shift", "-", "mean shift")]),
        ]
        for ax, (name, lines) in zip(axes.flat, panels, strict=True):
            drawn = False
            for column, linestyle, label in lines:
                if column in metrics and metrics[column].notna().any():
                    ax.plot(
                        step,
                        _finite(metrics[column]) * _scale(column),
                        color=color,
                        linestyle=linestyle,
                        marker=".",
                        label=label,
                    )
                    drawn = True
            if not drawn:
                ax.text(
                    0.5,
                    0.5,
                    "not logged for this run",
                    ha="center",
                    va="center",
                    transform=ax.transAxes,
                )
            elif len(lines) > 1:
                ax.legend(loc="best")
            _step_axis(ax)
            ax.set_ylabel(LABELS[name])
        if "run_id" in metrics and len(metrics):
            figure.suptitle(str(metrics["run_id"].iloc[0]))
        return save_figure(figure, path)


# ----------------------------------------------------------------------------- CLI


def _clear(out: Path, name: str) -> bool:
    stale = [p for p in (out / f"{name}.png", out / f"{name}.pdf") if p.exists()]
    for path in stale:
        path.unlink()
    return bool(stale)


def make_figures(
    runs: pd.DataFrame, out: Path, report: Callable[[str], None] = print
) -> list[Path]:
    """Every figure of :data:`FIGURES` that ``runs`` allow, and the summary tables, into
    ``out``; one message through ``report`` per skipped figure or group of runs."""
    out.mkdir(parents=True, exist_ok=True)
    for message in skipped_runs(runs):
        report(message)
    pooled = pooled_keys(runs)
    if pooled:
        report(f"note: runs differing only in {', '.join(pooled)} are averaged together")
    used = prepare_runs(runs)
    metrics = load_metrics(runs=used, config_keys=("run_dir",)) if not used.empty else None
    written: list[Path] = []
    for name, plot in FIGURES.items():
        try:
            figure = plot(runs, metrics)
        except Skip as reason:
            removed = " (removed its stale files)" if _clear(out, name) else ""
            report(f"skipping {name} figure: {reason}{removed}")
            continue
        for suffix in (".png", ".pdf"):
            written.append(save_figure(figure, out / f"{name}{suffix}"))
    if used.empty:
        report("skipping summary tables: no completed or diverged run")
    else:
        written += write_summary(summary_table(runs, metrics), out)
    return written


def plot_results(
    *roots: str | Path,
    out: str | Path = "results/figures",
    report: Callable[[str], None] = print,
) -> list[Path]:
    """Load the run records under ``roots`` and write every figure and table into ``out``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # incomplete runs are reported by make_figures
        runs = load_runs(*roots)
    if runs.empty:
        return []
    return make_figures(runs, Path(out), report)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="normlab-plot", description="Figures and summary tables from normlab run records."
    )
    parser.add_argument(
        "results",
        nargs="+",
        type=Path,
        help="results directories (a sweep, results/runs, or one run)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("results/figures"),
        help="where figures and tables go (default: results/figures)",
    )
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.results if not p.exists()]
    if missing:
        print(f"normlab-plot: no such directory: {', '.join(missing)}", file=sys.stderr)
        return 2
    written = plot_results(*args.results, out=args.out)
    if not written:
        print(
            f"normlab-plot: no run records under {', '.join(map(str, args.results))}",
            file=sys.stderr,
        )
        return 1
    print(f"wrote {len(written)} files:")
    for path in written:
        print(f"  {path}")
    return 0


# ----------------------------------------------------------------------------- helpers


def _column(frame: pd.DataFrame, key: str, default: Any = None) -> pd.Series:
    if key in frame:
        return frame[key]
    return pd.Series([default] * len(frame), index=frame.index, dtype=object)


def _missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _fmt(value: Any) -> str:
    if _missing(value):
        return "–"
    if isinstance(value, float | np.floating):
        return f"{value:g}"
    if isinstance(value, np.integer):
        return str(int(value))
    return str(value)


def _sort_key(value: Any) -> tuple[int, float, str]:
    if _missing(value):
        return (2, 0.0, "")
    if isinstance(value, bool | np.bool_):
        return (1, 0.0, str(value))
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(value))


if __name__ == "__main__":
    raise SystemExit(main())
