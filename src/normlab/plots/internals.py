"""``mode_internals``: for the runs whose mode declares quantities drawn against a bound
(``Mode.quantities``, recorded in each run's ``summary.json``), each such quantity over training
against its bound's schedule, a panel per quantity. For renorm: the fraction of channels where
``r`` and ``d`` were clipped, against ``rmax``/``dmax`` (Ioffe 2017, Algorithm 1)."""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from normlab.grouping import column_of, prepare_runs, run_metrics
from normlab.plots import draw
from normlab.plots.frames import INTERNALS, bounded, declares, mode_internals_frame
from normlab.plots.runs import select
from normlab.plots.style import new_figure, styled
from normlab.quantities import DECLARED


@styled
def plot_mode_internals(runs: pd.DataFrame, metrics: pd.DataFrame | None = None) -> Figure:
    """Each declared quantity with a bound over training, the bound on a twin axis."""
    used = select(prepare_runs(runs), INTERNALS)
    quantities = bounded(column_of(used, DECLARED))
    rows = run_metrics(runs, metrics)
    rows = rows.loc[rows["run_dir"].isin(set(used["run_dir"]))]
    frame = mode_internals_frame(runs, metrics)
    colors = draw.palette_of(rows)
    diverged = rows.loc[rows["diverged"].astype(bool)]
    variant = ["batch_size", "setting"]
    styles = draw.variant_styles(rows, variant)
    figure, axes = new_figure(len(quantities))
    for ax, quantity in zip(axes.flat, quantities.values(), strict=True):
        twin = ax.twinx()
        modes = set(used.loc[declares(used, quantity.name), "mode"])
        drawn = frame.loc[frame["mode"].isin(modes)]
        for (mode, size, setting), line in drawn.groupby(["mode", *variant], sort=False):
            style = styles[(size, setting)]
            part = line.loc[line["metric"] == quantity.name]
            if not part.empty:
                draw.draw_mean(ax, part, colors[mode].color, style, quantity.scale)
            schedule = line.loc[line["metric"] == quantity.bound]
            twin.plot(
                schedule["step"].to_numpy(float),
                schedule["mean"].to_numpy(float),
                color="0.2",
                linestyle=style,
                linewidth=0.8,
            )
        if quantity.name in diverged:
            for key, part_ in diverged.groupby(variant, sort=False):
                draw.draw_diverged(
                    ax, part_, quantity.name, styles[tuple(key)], quantity.scale, colors
                )
        draw.step_axis(ax)
        ax.set_ylabel(quantity.label)
        twin.set_ylabel(f"{quantity.bound} (schedule)", color="0.2")
        twin.grid(False)
        twin.spines["right"].set_visible(True)
    bounds = " / ".join(dict.fromkeys(q.bound for q in quantities.values()))
    handles = [
        *[Line2D([], [], color=s.color, label=f"{m} (left axis)") for m, s in colors.items()],
        Line2D([], [], color="0.2", linewidth=0.8, label=f"{bounds} (right axis)"),
        *draw.style_handles(styles, variant),
        *draw.band_handles(not diverged.empty),
    ]
    draw.legend(figure, handles)
    return figure
