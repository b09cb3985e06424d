"""Final accuracy against the number of values behind each per-channel statistic.

A fully connected layer's statistic over a batch of ``B`` comes from ``B`` values per channel; a
convolution's from ``B`` × its spatial positions. Drawn against ``values_per_channel_min`` (the
fewest over a run's layers, log2 axis), fully connected and convolutional results read on one
scale: one line per (label, architecture on data set).
"""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

from normlab.grouping import prepare_runs
from normlab.plots import draw
from normlab.plots.accuracy import draw_vs_x
from normlab.plots.frames import VALUES_PER_CHANNEL, values_per_channel_frame
from normlab.plots.runs import select
from normlab.plots.style import PANEL_WIDTH, new_figure, styled


@styled
def plot_accuracy_vs_values_per_channel(
    runs: pd.DataFrame, metrics: pd.DataFrame | None = None
) -> Figure:
    select(prepare_runs(runs), VALUES_PER_CHANNEL)
    frame = values_per_channel_frame(runs)
    frame = frame.assign(setting_order=frame.groupby(["architecture", "setting"]).ngroup())
    colors = draw.palette_of(frame)
    styles = draw.variant_styles(frame, ["architecture", "setting"])
    figure, axes = new_figure(1, height=2.6)
    figure.set_figwidth(PANEL_WIDTH * 1.5)
    ax = axes[0, 0]
    draw_vs_x(
        ax,
        frame,
        "val_acc_eval",
        styles,
        colors,
        x="values_per_channel",
        line=("mode", "architecture", "setting"),
    )
    ax.set_xlabel("values behind each channel's statistic (fewest over layers)")
    handles = draw.mode_handles(colors, marker=True)
    handles += draw.style_handles(styles, ["architecture", "setting"])
    draw.legend(figure, handles + draw.final_handles())
    return figure
