"""Small multiples of final accuracy against batch size, a panel per setting (model on data set,
then the settings that vary within it), on shared axes; diverged runs count as failures, at
chance accuracy, and are marked.

- ``accuracy_by_setting``: a line per label (the seed-question overview);
- ``schedules_by_setting``: a line per label and momentum schedule of its running statistics,
  for labels run under several schedules, beside the labels run under one (the question's
  proposal: moving averages with a small initial decay raised later, against batch statistics).
"""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

from normlab.grouping import prepare_runs
from normlab.plots import draw
from normlab.plots.frames import (
    BY_SETTING,
    SCHEDULES,
    accuracy_by_setting_frame,
    schedules_by_setting_frame,
)
from normlab.plots.runs import select
from normlab.plots.style import NEUTRAL, linestyle, new_figure, styled
from normlab.quantities import LABELS

X_LABEL = "batch size (examples per step)"
DODGE = 0.06  # octaves between lines at one batch size
# a variant's marker (a line style too), apart from the palette's most used ones
VARIANT_MARKERS = ("v", "D", "P", "*", "h", "<")


@styled
def plot_accuracy_by_setting(runs: pd.DataFrame, metrics: pd.DataFrame | None = None) -> Figure:
    """Final held-out accuracy against batch size, a panel per setting, a line per label."""
    select(prepare_runs(runs), BY_SETTING)
    return setting_panels(accuracy_by_setting_frame(runs))


@styled
def plot_schedules_by_setting(runs: pd.DataFrame, metrics: pd.DataFrame | None = None) -> Figure:
    """Final held-out accuracy against batch size, a panel per setting, a line per label and
    momentum schedule (a line style per schedule)."""
    select(prepare_runs(runs), SCHEDULES)
    return setting_panels(schedules_by_setting_frame(runs), variant="schedule")


def setting_panels(frame: pd.DataFrame, variant: str | None = None) -> Figure:
    """The panels of ``frame`` (rows of :func:`~normlab.plots.frames.failure_stats` per panel,
    label, ``variant`` and batch size) on shared axes, one legend below."""
    panels = list(dict.fromkeys(frame["panel"]))
    columns, rows = draw.panel_grid(len(panels))
    figure, axes = new_figure(columns, rows, sharex=True, sharey=True)
    colors = draw.palette_of(frame)
    line = ["mode"] + ([variant] if variant else [])
    variants = [v for v in dict.fromkeys(frame[variant]) if v] if variant else []
    styles = {"": "-", **{v: linestyle(i) for i, v in enumerate(variants)}}
    markers = {v: VARIANT_MARKERS[i % len(VARIANT_MARKERS)] for i, v in enumerate(variants)}
    for ax, panel in zip(axes.flat, panels, strict=False):
        part = frame.loc[frame["panel"] == panel]
        lines = list(part.groupby(line, sort=False))
        for index, (key, points) in enumerate(lines):
            mode, kind = (key[0], key[1] if variant else "")
            points = draw.dodged(points, "batch_size", index, len(lines), DODGE, log=True)
            marker = markers.get(kind)
            style = colors[mode]
            draw.failure_line(ax, points, "batch_size", 100.0, style, styles[kind], marker)
        draw.chance_line(ax, part["chance"], 100.0)
        ax.set_title(panel)
    draw.log2_axis(axes.flat[0], frame["batch_size"])
    draw.clip_percent(axes.flat[0])
    draw.hide_unused(axes, len(panels))
    draw.label_outer(axes, len(panels), X_LABEL, LABELS["val_acc_eval"])
    handles = draw.mode_handles(colors, marker=True)
    if len(variants) > 1:
        handles += [
            draw.Line2D([], [], color=NEUTRAL, linestyle=styles[v], marker=markers[v], label=v)
            for v in variants
        ]
    draw.legend(figure, handles + draw.failure_handles())
    return figure
