"""``ablation``: the study of the mode Yan et al. 2020 introduce (MABN, arXiv 2001.06838) and its
ablation — every label and model-option variant of the studies that hold its runs, a row each —
as final held-out error with 95 % intervals, a marker per normalization batch (examples behind
each statistic, under the optimizer's batch where that is larger), a panel per setting, and the
paper's own ImageNet numbers (:data:`normlab.papers.MABN_ERROR`) in a panel beside."""

from __future__ import annotations

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from normlab import papers
from normlab.grouping import prepare_runs
from normlab.plots import draw
from normlab.plots.frames import ABLATION, ablation_frame
from normlab.plots.runs import select
from normlab.plots.style import NEUTRAL, PANEL_WIDTH, label_rank, new_figure, palette, styled

MARKERS = ("o", "s", "^", "D", "v", "P")
X_LABEL = "held-out error (%)"


def _group_text(statistics: int, batch: int) -> str:
    if statistics < batch:
        return f"normalization batch {statistics} (optimizer batch {batch})"
    return f"batch {batch}"


@styled
def plot_ablation(runs: pd.DataFrame, metrics: pd.DataFrame | None = None) -> Figure:
    """Final held-out error per row (label and model options) and normalization batch, a panel
    per setting, the paper's numbers in the last panel."""
    select(prepare_runs(runs), ABLATION)
    frame = ablation_frame(runs)
    ranked = frame.drop_duplicates("row").assign(_rank=lambda f: f["mode"].map(label_rank))
    rows = list(ranked.sort_values(["_rank", "row"], kind="stable")["row"])
    groups = sorted(set(zip(frame["statistics_batch_size"], frame["batch_size"], strict=True)))
    markers = {g: MARKERS[i % len(MARKERS)] for i, g in enumerate(groups)}
    offsets = {g: (i - (len(groups) - 1) / 2) * 0.7 / len(groups) for i, g in enumerate(groups)}
    panels = list(dict.fromkeys(frame["panel"]))
    figure, axes = new_figure(len(panels) + 1, height=0.9 + 0.3 * len(rows))
    figure.set_figwidth(0.8 * PANEL_WIDTH * len(panels) + 0.7 * PANEL_WIDTH + 1.2)
    colors = palette(frame["mode"])
    for ax, panel in zip(axes.flat, panels, strict=False):
        part = frame.loc[frame["panel"] == panel]
        for (row, mode, statistics, batch), point in part.groupby(
            ["row", "mode", "statistics_batch_size", "batch_size"], sort=False
        ):
            where = point.assign(_y=rows.index(row) + offsets[(statistics, batch)])
            group = (statistics, batch)
            draw.failure_line(ax, where, "_y", 100.0, colors[mode], "", markers[group], True)
        draw.chance_line(ax, 1 - part["chance"], 100.0, vertical=True)
        _rows_axis(ax, rows, labelled=ax is axes.flat[0])
        ax.set_title(panel)
        ax.set_xlabel(X_LABEL)
    for ax in axes.flat[1 : len(panels)]:
        ax.sharex(axes.flat[0])
    draw.clip_percent(axes.flat[0], "x")
    _paper_panel(axes.flat[len(panels)], markers)
    handles = [
        Line2D([], [], color=NEUTRAL, marker=markers[g], linestyle="", label=_group_text(*g))
        for g in groups
    ]
    draw.legend(figure, handles + draw.failure_handles("chance (error 1 − 1/classes)"))
    return figure


def _rows_axis(ax: Axes, rows: list[str], labelled: bool) -> None:
    ax.set_yticks(range(len(rows)), rows if labelled else [""] * len(rows))
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.grid(axis="y", visible=False)


def _paper_panel(ax: Axes, markers: dict[tuple[int, int], str]) -> None:
    """The paper's top-1 errors (:func:`normlab.papers.mabn_rows`), a row per method, marked as
    the harness's runs of the same normalization batch are."""
    rows = papers.mabn_rows()
    methods = list(dict.fromkeys(method for method, _, _ in rows))
    colors = palette(papers.MABN_MODES[m] for m in methods)
    by_size = {statistics: marker for (statistics, _), marker in markers.items()}
    for method, size, error in rows:
        color = colors[papers.MABN_MODES[method]].color
        index = methods.index(method)
        ax.plot(error, index, marker=by_size.get(size, "*"), color=color, linestyle="")
        offset = {"xytext": (0, 5), "textcoords": "offset points"}
        text = f"{error:.2f} at {size}"
        ax.annotate(text, (error, index), **offset, fontsize=6, ha="center", color=color)
    _rows_axis(ax, methods, labelled=True)
    low, high = min(e for *_, e in rows), max(e for *_, e in rows)
    ax.set_xlim(low - 0.15 * (high - low), high + 0.15 * (high - low))
    ax.set_title("Yan et al. 2020: ResNet-50, ImageNet")
    ax.set_xlabel("top-1 error (%)")
