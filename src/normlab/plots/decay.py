"""``decay_schedules``: accuracy and the batch statistics' mismatch with the running ones
(mean shift ``|μ_B − μ| / σ``, std ratio ``σ_B / σ``) over training, one column per momentum
schedule of the moving averages."""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

from normlab.grouping import prepare_runs, run_metrics
from normlab.plots import draw
from normlab.plots.frames import decay_schedules_frame
from normlab.plots.runs import Skip
from normlab.plots.style import new_figure, styled
from normlab.quantities import LABELS, drawn_in, scale_of

METRICS = drawn_in("decay_schedules")


@styled
def plot_decay_schedules(runs: pd.DataFrame, metrics: pd.DataFrame | None = None) -> Figure:
    """Accuracy, mean shift and std ratio over steps; a column per momentum schedule."""
    used = prepare_runs(runs)
    kinds = sorted(set(used["momentum_kind"].dropna())) if not used.empty else []
    if len(kinds) < 2:
        only = f" (all use {kinds[0]})" if kinds else ""
        raise Skip(f"needs runs with two or more momentum schedules{only}")
    frame = decay_schedules_frame(runs, metrics)
    rows = run_metrics(runs, metrics, exclude=["config.momentum.kind"])
    colors = draw.palette_of(rows)
    diverged = rows.loc[rows["diverged"].astype(bool)]
    figure, axes = new_figure(len(kinds), len(METRICS), height=1.8, sharex="col", sharey="row")
    variant = ["batch_size", "setting"]
    styles = draw.variant_styles(rows, variant)
    for col, kind in enumerate(kinds):
        for row, metric in enumerate(METRICS):
            ax = axes[row, col]
            part = frame.loc[(frame["momentum_kind"] == kind) & (frame["metric"] == metric)]
            for (mode, setting, size), line in part.groupby(
                ["mode", "setting", "batch_size"], sort=False
            ):
                style = styles[(size, setting)]
                draw.draw_mean(ax, line, colors[mode].color, style, scale_of(metric))
            bad = diverged.loc[diverged["momentum_kind"] == kind]
            if metric in bad:
                for key, part_ in bad.groupby(variant, sort=False):
                    style = styles[tuple(key)]
                    draw.draw_diverged(ax, part_, metric, style, scale_of(metric), colors)
            if metric == "std_ratio":
                ax.axhline(1.0, color="0.5", linewidth=0.6)
            if col == 0:
                ax.set_ylabel(LABELS[metric])
        axes[0, col].set_title(f"momentum schedule: {kind}")
        draw.step_axis(axes[-1, col])
    handles = (
        draw.mode_handles(colors)
        + draw.style_handles(styles, variant)
        + draw.band_handles(not diverged.empty)
    )
    draw.legend(figure, handles)
    return figure
