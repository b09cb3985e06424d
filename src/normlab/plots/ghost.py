"""``ghost_batch``: for runs with ghost batches (statistics over sub-batches of the optimizer's
batch; Hoffer et al. 2017), final eval- and train-mode accuracy against the statistics batch
size, one panel per optimizer batch size; runs of the same modes with whole-batch statistics are
the point where the two sizes meet."""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

from normlab.grouping import prepare_runs, settings_of
from normlab.plots import draw
from normlab.plots.frames import GHOST, ghost_batch_frame, ghost_runs
from normlab.plots.runs import select
from normlab.plots.style import SECOND, new_figure, styled
from normlab.quantities import LABELS

METRICS = (("val_acc_eval", "-", {}), ("val_acc_train_mode", "--", SECOND))


@styled
def plot_ghost_batch(runs: pd.DataFrame, metrics: pd.DataFrame | None = None) -> Figure:
    """Final eval-mode (solid) and train-mode (dashed) accuracy against the statistics batch
    size, a panel per optimizer batch size and a row per setting."""
    select(prepare_runs(runs), GHOST)
    used = ghost_runs(runs)
    frame = ghost_batch_frame(runs)
    colors = draw.palette_of(frame)
    settings, sizes = settings_of(used), sorted(set(used["batch_size"]))
    figure, axes = new_figure(len(sizes), len(settings), sharey="row")
    for row_axes, setting in zip(axes, settings, strict=True):
        labelled = False
        for ax, size in zip(row_axes, sizes, strict=True):
            part = frame.loc[(frame["setting"] == setting) & (frame["batch_size"] == size)]
            if part.empty:
                ax.set_visible(False)
                continue
            _draw_panel(ax, part, colors)
            draw.log2_axis(ax, part["statistics_batch_size"])
            ax.set_title(f"batch size {size}" + (f", {setting}" if setting else ""))
            ax.set_xlabel("statistics batch size (examples per statistic)")
            if not labelled:
                ax.set_ylabel(LABELS["val_acc_eval"])
                labelled = True
    handles = [
        *draw.mode_handles(colors, marker=True),
        *draw.metric_handles(
            "eval mode (population statistics)", "train mode (batch or sub-batch statistics)"
        ),
        *draw.final_handles(),
    ]
    draw.legend(figure, handles)
    return figure


def _draw_panel(ax, part: pd.DataFrame, colors) -> None:
    """Each metric: a line through each normalization mode's points (the statistics batch size
    is the axis; ghost and whole-batch labels of one mode on one line), each label's points
    with their error bars."""
    for metric, linestyle, marker_style in METRICS:
        points = part.loc[part["metric"] == metric].sort_values("statistics_batch_size")
        for _, family in points.groupby("norm_mode", sort=False):
            drawn = family.loc[family["mean"].notna()]
            ax.plot(
                drawn["statistics_batch_size"].to_numpy(float),
                drawn["mean"].to_numpy(float) * 100.0,
                color="0.5",
                linestyle=linestyle,
                linewidth=0.8,
            )
        for mode, group in points.groupby("mode", sort=False):
            draw.errorbars(
                ax, group, "statistics_batch_size", 100.0, colors[mode], "", **marker_style
            )
            if metric == "val_acc_eval":  # once per panel
                draw.mark_diverged(ax, group, "statistics_batch_size", 100.0, colors[mode])
