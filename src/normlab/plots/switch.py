"""``switch_point``: final held-out accuracy against the fraction ``s`` of training at which a run
switches from batch statistics to the population statistics (``norm.switch_at``; 0: population
statistics throughout, 1: batch statistics throughout), the running statistics still updating
or frozen after the switch as two lines, a panel per setting (Wu & Johnson 2021, FrozenBN)."""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from normlab.grouping import prepare_runs
from normlab.plots import draw
from normlab.plots.frames import SWITCHED, switch_point_frame
from normlab.plots.runs import select
from normlab.plots.style import NEUTRAL, new_figure, styled
from normlab.quantities import LABELS

FREEZE = {
    False: ("-", "running statistics updating after the switch"),
    True: ("--", "running statistics frozen at the switch"),
}
X_LABEL = "switch fraction s\n(0: population statistics throughout, 1: batch statistics throughout)"
DODGE = 0.015  # between lines at one switch fraction


@styled
def plot_switch_point(runs: pd.DataFrame, metrics: pd.DataFrame | None = None) -> Figure:
    """Final held-out accuracy against the switch fraction, a line per label and freeze."""
    select(prepare_runs(runs), SWITCHED)
    frame = switch_point_frame(runs)
    panels = list(dict.fromkeys(frame["panel"]))
    columns, rows = draw.panel_grid(len(panels))
    figure, axes = new_figure(columns, rows, sharex=True, sharey=True)
    colors = draw.palette_of(frame)
    for ax, panel in zip(axes.flat, panels, strict=False):
        part = frame.loc[frame["panel"] == panel]
        lines = list(part.groupby(["mode", "frozen"], sort=False))
        for index, ((mode, frozen), points) in enumerate(lines):
            points = draw.dodged(points, "switch_at", index, len(lines), DODGE, log=False)
            draw.failure_line(ax, points, "switch_at", 100.0, colors[mode], FREEZE[frozen][0])
        draw.chance_line(ax, part["chance"], 100.0)
        ax.set_title(panel)
    ticks = sorted(set(frame["switch_at"]))
    axes.flat[0].set_xticks(ticks, [f"{t:g}" for t in ticks])
    axes.flat[0].set_xlim(-0.06, 1.06)
    draw.clip_percent(axes.flat[0])
    draw.hide_unused(axes, len(panels))
    draw.label_outer(axes, len(panels), X_LABEL, LABELS["val_acc_eval"])
    shown = sorted(set(frame["frozen"]))
    handles = draw.mode_handles(colors, marker=True) + [
        Line2D([], [], color=NEUTRAL, linestyle=FREEZE[f][0], label=FREEZE[f][1]) for f in shown
    ]
    draw.legend(figure, handles + draw.failure_handles())
    return figure
