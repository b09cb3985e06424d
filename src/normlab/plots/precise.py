"""``precise_statistics``: for the runs that recomputed precise statistics, final accuracy with
the EMA population statistics against the same weights with statistics recomputed exactly over
training batches (fvcore's PreciseBN; Wu & Johnson 2021), and their paired difference, against
batch size."""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

from normlab.grouping import column_of, fmt, settings_of
from normlab.plots import draw
from normlab.plots.frames import PRECISE, precise_runs, precise_statistics_frame
from normlab.plots.runs import Skip
from normlab.plots.style import SECOND, new_figure, styled
from normlab.quantities import LABELS

PANELS = (
    # (panel, metric, line style, marker style, marks diverged seeds)
    (0, "val_acc_eval", "-", {}, True),
    (0, "val_acc_precise", "--", SECOND, False),
    (1, "precise_minus_eval", "-", {}, True),
)


@styled
def plot_precise_statistics(runs: pd.DataFrame, metrics: pd.DataFrame | None = None) -> Figure:
    """Final accuracy with EMA (solid) and precisely recomputed (dashed) population statistics
    against batch size, and their paired difference; a row of panels per setting."""
    used = precise_runs(runs)
    if used.empty:
        raise Skip(f"needs {PRECISE.text}; none in these results")
    frame = precise_statistics_frame(runs)
    colors = draw.palette_of(frame)
    settings = settings_of(used)
    figure, axes = new_figure(2, len(settings))
    for row_axes, setting in zip(axes, settings, strict=True):
        part = frame.loc[frame["setting"] == setting]
        for mode, line in part.groupby("mode", sort=False):
            for panel, metric, linestyle, marker_style, marks in PANELS:
                points = line.loc[line["metric"] == metric]
                ax = row_axes[panel]
                draw.errorbars(
                    ax, points, "batch_size", 100.0, colors[mode], linestyle, **marker_style
                )
                if marks:
                    draw.mark_diverged(ax, points, "batch_size", 100.0, colors[mode])
        row_axes[1].axhline(0.0, color="0.5", linewidth=0.6)
        for ax, metric in zip(row_axes, ("val_acc_eval", "precise_minus_eval"), strict=True):
            draw.log2_axis(ax, part["batch_size"])
            ax.set_xlabel("batch size (examples per step)")
            ax.set_ylabel(LABELS[metric])
            if setting:
                ax.set_title(setting)
    batches = column_of(used, "config.eval.precise_batches").dropna().unique()
    over = f"{fmt(batches[0])} training batches" if len(batches) == 1 else "K training batches"
    handles = [
        *draw.mode_handles(colors, marker=True),
        *draw.metric_handles(
            "EMA population statistics (val_acc_eval)",
            f"recomputed over {over} (val_acc_precise)",
        ),
        *draw.final_handles(),
    ]
    draw.legend(figure, handles)
    return figure
