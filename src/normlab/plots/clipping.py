"""``renorm_internals``: for the runs that log r/d clipping, the fraction of channels where
``r`` and ``d`` were clipped over training, against their ``rmax``/``dmax`` schedule (Ioffe
2017, Algorithm 1)."""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from normlab.grouping import prepare_runs, run_metrics
from normlab.plots import draw
from normlab.plots.frames import CLIPPING, clipping_runs, renorm_internals_frame
from normlab.plots.runs import select
from normlab.plots.style import new_figure, styled
from normlab.quantities import LABELS

PAIRS = (("r_clip_frac", "rmax"), ("d_clip_frac", "dmax"))


@styled
def plot_renorm_internals(runs: pd.DataFrame, metrics: pd.DataFrame | None = None) -> Figure:
    """Fraction of r and d clipped over training, rmax/dmax on a twin axis."""
    select(prepare_runs(runs), CLIPPING)
    rows = run_metrics(runs, metrics)
    rows = rows.loc[rows["run_dir"].isin(set(clipping_runs(runs)))]
    frame = renorm_internals_frame(runs, metrics)
    colors = draw.palette_of(rows)
    diverged = rows.loc[rows["diverged"].astype(bool)]
    variant = ["batch_size", "setting"]
    styles = draw.variant_styles(rows, variant)
    figure, axes = new_figure(2)
    for ax, (clip, bound) in zip(axes.flat, PAIRS, strict=True):
        twin = ax.twinx()
        for (mode, size, setting), line in frame.groupby(["mode", *variant], sort=False):
            style = styles[(size, setting)]
            part = line.loc[line["metric"] == clip]
            if not part.empty:
                draw.draw_mean(ax, part, colors[mode].color, style, 100.0)
            schedule = line.loc[line["metric"] == bound]
            twin.plot(
                schedule["step"].to_numpy(float),
                schedule["mean"].to_numpy(float),
                color="0.2",
                linestyle=style,
                linewidth=0.8,
            )
        if clip in diverged:
            for key, part_ in diverged.groupby(variant, sort=False):
                draw.draw_diverged(ax, part_, clip, styles[tuple(key)], 100.0, colors)
        draw.step_axis(ax)
        ax.set_ylabel(LABELS[clip])
        twin.set_ylabel(f"{bound} (schedule)", color="0.2")
        twin.grid(False)
        twin.spines["right"].set_visible(True)
    handles = [
        *[
            Line2D([], [], color=s.color, label=f"{m}: fraction clipped (left axis)")
            for m, s in colors.items()
        ],
        Line2D([], [], color="0.2", linewidth=0.8, label="rmax / dmax (right axis)"),
        *draw.style_handles(styles, variant),
        *draw.band_handles(not diverged.empty),
    ]
    draw.legend(figure, handles)
    return figure
