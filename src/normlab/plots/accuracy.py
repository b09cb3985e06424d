"""Accuracy figures: held-out accuracy against step, one panel per batch size (Ioffe 2017,
Figs. 1-3; the non-i.i.d. runs apart, as Fig. 3), final accuracy against batch size (Wu & He
2018, Fig. 1), and the train-mode minus eval-mode gap and KL against batch size."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from normlab.grouping import prepare_runs, run_metrics, with_setting
from normlab.plots import draw
from normlab.plots.frames import (
    IID,
    NON_IID,
    accuracy_vs_batch_size_frame,
    accuracy_vs_step_frame,
    train_eval_gap_frame,
)
from normlab.plots.runs import Skip
from normlab.plots.style import Style, new_figure, styled
from normlab.quantities import LABELS, scale_of


@styled
def plot_accuracy_vs_step(
    runs: pd.DataFrame, metrics: pd.DataFrame | None = None, sampler: str = "iid"
) -> Figure:
    """Held-out accuracy (population statistics) vs step, a panel per batch size."""
    need = NON_IID if sampler == "non_iid" else IID
    rows = run_metrics(runs, metrics, exclude=["config.data.sampler"])
    rows = rows.loc[need.keep(rows)] if not rows.empty else rows
    if rows.empty:
        raise Skip(f"needs {need.text}; none in these results")
    if "val_acc_eval" not in rows or rows["val_acc_eval"].isna().all():
        raise Skip("needs runs that log val_acc_eval; none in these results")
    frame = accuracy_vs_step_frame(runs, metrics, sampler)
    colors = draw.palette_of(rows)
    diverged = rows.loc[rows["diverged"].astype(bool)]
    sizes = sorted(set(rows["batch_size"]))
    columns, grid_rows = draw.grid_shape(len(sizes))
    figure, axes = new_figure(columns, grid_rows, sharey=True)
    styles = draw.variant_styles(rows, ["setting"])
    for ax, size in zip(axes.flat, sizes, strict=False):
        for (mode, setting), line in frame.loc[frame["batch_size"] == size].groupby(
            ["mode", "setting"], sort=False
        ):
            draw.draw_mean(ax, line, colors[mode].color, styles[(setting,)], 100.0)
        for setting, part in diverged.loc[diverged["batch_size"] == size].groupby("setting"):
            draw.draw_diverged(ax, part, "val_acc_eval", styles[(setting,)], 100.0, colors)
        suffix = ", non-i.i.d. batches" if sampler == "non_iid" else ""
        ax.set_title(f"batch size {size}{suffix}")
        draw.step_axis(ax)
    for ax in axes[:, 0]:
        ax.set_ylabel(LABELS["val_acc_eval"])
    draw.hide_unused(axes, len(sizes))
    handles = (
        draw.mode_handles(colors)
        + draw.style_handles(styles, ["setting"])
        + draw.band_handles(not diverged.empty)
    )
    draw.legend(figure, handles)
    return figure


@styled
def plot_accuracy_vs_step_non_iid(
    runs: pd.DataFrame, metrics: pd.DataFrame | None = None
) -> Figure:
    return plot_accuracy_vs_step(runs, metrics, sampler="non_iid")


def draw_vs_x(
    ax: Axes,
    frame: pd.DataFrame,
    metric: str,
    styles: dict[tuple, Any],
    colors: dict[str, Style],
    x: str = "batch_size",
    line: Sequence[str] = ("mode", "setting"),
) -> None:
    """Final means with interval error bars against ``x`` (log2), a line per ``line`` key,
    ``k/n div.`` where seeds diverged."""
    scale = scale_of(metric)
    for key, points in frame.groupby(list(line), sort=False):
        style = colors[key[0]]
        draw.errorbars(ax, points, x, scale, style, styles[tuple(key[1:])])
        draw.mark_diverged(ax, points, x, scale, style)
    draw.log2_axis(ax, frame[x])
    ax.set_ylabel(LABELS[metric])


def _batch_size_figure(runs: pd.DataFrame, frame: pd.DataFrame, metrics: Sequence[str]) -> Figure:
    figure, axes = new_figure(len(metrics))
    styles = draw.variant_styles(with_setting(prepare_runs(runs)), ["setting"])
    colors = draw.palette_of(frame)
    for ax, metric in zip(axes.flat, metrics, strict=True):
        part = frame.loc[frame["metric"] == metric] if "metric" in frame else frame
        draw_vs_x(ax, part, metric, styles, colors)
        ax.set_xlabel("batch size (examples per step)")
        if metric == "gap_train_minus_eval":
            ax.axhline(0.0, color="0.5", linewidth=0.6)
        if metric == "kl_train_eval" and (part["mean"] > 0).any():
            # spans orders of magnitude (renorm at batch size 1 reaches 1e5 nats); KL >= 0
            ax.set_yscale("log", nonpositive="clip")
    handles = draw.mode_handles(colors, marker=True) + draw.style_handles(styles, ["setting"])
    draw.legend(figure, handles + draw.final_handles())
    return figure


@styled
def plot_accuracy_vs_batch_size(runs: pd.DataFrame, metrics: pd.DataFrame | None = None) -> Figure:
    frame = accuracy_vs_batch_size_frame(runs)
    if frame.empty or frame["n_used"].sum() + frame["n_diverged"].sum() == 0:
        raise Skip("needs completed or diverged runs with a final val_acc_eval")
    return _batch_size_figure(runs, frame, ["val_acc_eval"])


@styled
def plot_train_eval_gap(runs: pd.DataFrame, metrics: pd.DataFrame | None = None) -> Figure:
    frame = train_eval_gap_frame(runs)
    if frame.empty or frame["n_used"].sum() == 0:
        raise Skip("needs runs with a final gap_train_minus_eval or kl_train_eval")
    return _batch_size_figure(runs, frame, ["gap_train_minus_eval", "kl_train_eval"])
