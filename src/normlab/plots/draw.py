"""Drawing shared by the figures: lines with interval bands, error bars, diverged runs, axes and
the one legend below the panels. Colours and markers come from a palette built from the runs
drawn (:func:`normlab.plots.style.palette`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator, NullLocator

from normlab import stats
from normlab.grouping import finite, missing
from normlab.plots.style import NEUTRAL, SECOND, Style, linestyle, ordered, palette

Palette = Mapping[str, Style]


def palette_of(*frames: pd.DataFrame) -> dict[str, Style]:
    """The palette of every label in the ``mode`` column of ``frames``."""
    labels = [m for frame in frames if "mode" in frame for m in frame["mode"]]
    return palette(ordered(labels))


def band_text() -> str:
    return f"{stats.describe()} over non-diverged seeds"


def variant_styles(rows: pd.DataFrame, columns: Sequence[str]) -> dict[tuple, Any]:
    """One line style per distinct combination of ``columns`` in ``rows`` (which carry
    ``setting_order``), settings by value, then batch size."""
    sort = ["setting_order", *(["batch_size"] if "batch_size" in columns else [])]
    distinct = rows.drop_duplicates(list(columns)).sort_values(sort, kind="stable")
    keys = map(tuple, distinct[list(columns)].to_numpy().tolist())
    return {key: linestyle(i) for i, key in enumerate(keys)}


def variant_text(values: Sequence[Any], columns: Sequence[str]) -> str:
    parts = []
    for column, value in zip(columns, values, strict=True):
        if column == "batch_size":
            parts.append(f"batch {value}")
        elif value not in ("", None):
            parts.append(str(value))
    return ", ".join(parts)


def legend(figure: Figure, handles: list[Any]) -> None:
    """One legend for the figure, below the panels, as many columns as the width holds."""
    if not handles:
        return
    longest = max(len(h.get_label()) for h in handles)
    entry_width = 0.45 + 0.055 * longest  # inches at 7 pt, handle included
    columns = max(1, min(len(handles), int(figure.get_figwidth() // entry_width)))
    figure.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        ncols=columns,
        borderaxespad=0.0,
    )


def step_axis(ax: Axes) -> None:
    ax.set_xlabel("training step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 2.5, 5, 10]))


def mode_handles(colors: Palette, marker: bool = False) -> list[Line2D]:
    return [
        Line2D([], [], color=s.color, marker=s.marker if marker else "", label=label)
        for label, s in colors.items()
    ]


def style_handles(styles: dict[tuple, Any], columns: Sequence[str]) -> list[Line2D]:
    if len(styles) < 2:
        return []
    return [
        Line2D([], [], color=NEUTRAL, linestyle=ls, label=variant_text(key, columns))
        for key, ls in styles.items()
    ]


def band_handles(diverged: bool) -> list[Any]:
    handles: list[Any] = [Patch(color="0.6", alpha=0.3, label=band_text())]
    if diverged:
        handles.append(
            Line2D(
                [],
                [],
                color=NEUTRAL,
                linewidth=0.6,
                marker="x",
                label="diverged run (ends at divergence)",
            )
        )
    return handles


def final_handles() -> list[Line2D]:
    """Legend entries for final values drawn with :func:`mark_diverged` and error bars."""
    return [
        Line2D(
            [],
            [],
            color=NEUTRAL,
            marker="o",
            markerfacecolor="white",
            linestyle="",
            markersize=7,
            label="some seeds diverged (k/n): mean of the rest",
        ),
        Line2D([], [], color=NEUTRAL, marker="|", linestyle="", label=f"error bar: {band_text()}"),
    ]


def metric_handles(first: str, second: str) -> list[Line2D]:
    """Legend entries for the solid first and dashed, half-filled second metric."""
    return [
        Line2D([], [], color=NEUTRAL, marker="o", label=first),
        Line2D([], [], color=NEUTRAL, marker="o", linestyle="--", label=second, **SECOND),
    ]


def draw_mean(ax: Axes, rows: pd.DataFrame, color: str, style: Any, scale: float) -> None:
    """A mean line over steps with its interval as a band (none where a seed is alone)."""
    step = rows["step"].to_numpy(float)
    ax.plot(step, rows["mean"].to_numpy(float) * scale, color=color, linestyle=style)
    low, high = rows["low"].to_numpy(float) * scale, rows["high"].to_numpy(float) * scale
    ax.fill_between(step, low, high, color=color, alpha=0.2, linewidth=0)


def draw_diverged(
    ax: Axes, rows: pd.DataFrame, metric: str, style: Any, scale: float, colors: Palette
) -> None:
    for _, run in rows.groupby("run_dir", sort=True):
        values = finite(run[metric]) * scale
        step = run["step"].to_numpy(float)
        color = colors[run["mode"].iloc[0]].color
        ax.plot(step, values, color=color, linestyle=style, linewidth=0.6, alpha=0.8)
        last = np.flatnonzero(np.isfinite(values))
        if last.size:
            ax.plot(step[last[-1]], values[last[-1]], color=color, marker="x", markersize=5)


def errorbars(
    ax: Axes,
    points: pd.DataFrame,
    x: str,
    scale: float,
    style: Style,
    line: Any,
    **kwargs: Any,
) -> None:
    """Means with asymmetric error bars from ``low``/``high`` (absent without an interval)."""
    mean = points["mean"].to_numpy(float) * scale
    low, high = points["low"].to_numpy(float) * scale, points["high"].to_numpy(float) * scale
    ax.errorbar(
        points[x].to_numpy(float),
        mean,
        yerr=np.vstack([mean - low, high - mean]),
        color=style.color,
        linestyle=line,
        marker=style.marker,
        capsize=2,
        **{"markersize": 4, **kwargs},
    )


def mark_diverged(ax: Axes, points: pd.DataFrame, x: str, scale: float, style: Style) -> None:
    """``k/n div.`` at each point (x from column ``x``) where some seeds diverged: a hollow
    marker on the mean of the rest, or a × on the x axis when every seed diverged."""
    for _, point in points.loc[points["n_diverged"] > 0].iterrows():
        text = f"{point['n_diverged']}/{point['n']} div."
        if missing(point["mean"]):  # every seed diverged: a × on the x axis
            where = ax.get_xaxis_transform()
            ax.plot(
                point[x],
                0.03,
                marker="x",
                color=style.color,
                markersize=6,
                transform=where,
                clip_on=False,
            )
            ax.annotate(
                text,
                (point[x], 0.03),
                xycoords=where,
                xytext=(3, 3),
                textcoords="offset points",
                fontsize=6,
                color=style.color,
            )
            continue
        y = point["mean"] * scale
        ax.plot(
            point[x],
            y,
            marker=style.marker,
            markersize=7,
            markerfacecolor="white",
            markeredgecolor=style.color,
            linestyle="",
        )
        ax.annotate(
            text,
            (point[x], y),
            xytext=(3, -9),
            textcoords="offset points",
            fontsize=6,
            color=style.color,
        )


def log2_axis(ax: Axes, values: pd.Series, low: int = 1, high: int = 128) -> None:
    """log2 x axis with integer ticks at powers of two, from ``low`` to ``high`` or as far as
    the values reach; every second or fourth power when there are many."""
    values = pd.to_numeric(values, errors="coerce").dropna()
    low = min(low, int(values.min())) if len(values) else low
    high = max(high, int(values.max())) if len(values) else high
    powers = list(range(math.floor(math.log2(max(low, 1))), math.ceil(math.log2(high)) + 1))
    stride = 1 if len(powers) <= 10 else 2 if len(powers) <= 20 else 4
    ticks = [2**k for k in powers[::stride]]
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks, [f"{t:,}" if t < 10**5 else f"2^{int(math.log2(t))}" for t in ticks])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlim(2 ** powers[0] / 1.4, 2 ** powers[-1] * 1.4)


def grid_shape(count: int, max_columns: int = 4) -> tuple[int, int]:
    columns = min(count, max_columns)
    return columns, math.ceil(count / columns)


def hide_unused(axes: np.ndarray, used: int) -> None:
    for ax in axes.flat[used:]:
        ax.set_visible(False)


# ----------------------------------------------------------------------------- failures counted


def failure_text() -> str:
    return f"{stats.describe()}, all seeds"


def failure_line(
    ax: Axes,
    points: pd.DataFrame,
    x: str,
    scale: float,
    style: Style,
    line: Any,
    marker: str | None = None,
    horizontal: bool = False,
) -> None:
    """Means with error bars through every point at column ``x`` (``n_diverged`` of ``n`` seeds
    diverged and counted at chance): a filled marker (``marker``, else the style's) where none
    diverged, a hollow one where some did, × where all did, and ``k/n`` beside each point with a
    divergence. ``horizontal``: the means along x, ``x`` along y."""
    at = points[x].to_numpy(float)
    mean = points["mean"].to_numpy(float) * scale
    low, high = points["low"].to_numpy(float) * scale, points["high"].to_numpy(float) * scale
    error = np.vstack([mean - low, high - mean])
    xy = (mean, at) if horizontal else (at, mean)
    bars = {"xerr" if horizontal else "yerr": error}
    ax.errorbar(*xy, **bars, color=style.color, linestyle=line, capsize=2)
    diverged, n = points["n_diverged"].to_numpy(int), points["n"].to_numpy(int)
    shape = marker or style.marker
    hollow = {"marker": shape, "markerfacecolor": "white", "markersize": 6}
    every = {"marker": "x", "markersize": 6, "markeredgewidth": 1.4}
    marks = (
        (diverged == 0, {"marker": shape}),
        ((diverged > 0) & (diverged < n), hollow),
        ((diverged > 0) & (diverged == n), every),
    )
    for where, shown in marks:
        if where.any():
            ax.plot(xy[0][where], xy[1][where], color=style.color, linestyle="", zorder=3, **shown)
    for i in np.flatnonzero(diverged > 0):
        ax.annotate(
            f"{diverged[i]}/{n[i]}",
            (xy[0][i], xy[1][i]),
            xytext=(4, -9),
            textcoords="offset points",
            fontsize=6,
            color=style.color,
        )


def chance_line(ax: Axes, chance: pd.Series, scale: float, vertical: bool = False) -> None:
    """A dotted line at the runs' chance value (one line per distinct value)."""
    for value in sorted(set(pd.to_numeric(chance, errors="coerce").dropna())):
        where = ax.axvline if vertical else ax.axhline
        where(value * scale, color="0.5", linewidth=0.7, linestyle=":", zorder=0)


def failure_handles(chance: str = "chance") -> list[Line2D]:
    """Legend entries for :func:`failure_line` and :func:`chance_line`."""
    marker = {"color": NEUTRAL, "linestyle": "", "markersize": 6}
    return [
        Line2D([], [], marker="|", label=f"error bar: {failure_text()}", **marker),
        Line2D(
            [], [], marker="o", markerfacecolor="white", label="k/n diverged (at chance)", **marker
        ),
        Line2D([], [], marker="x", markeredgewidth=1.4, label="all seeds diverged", **marker),
        Line2D([], [], color="0.5", linestyle=":", linewidth=0.7, label=chance),
    ]


def dodged(points: pd.DataFrame, x: str, index: int, count: int, step: float, log: bool):
    """``points`` with column ``x`` moved by ``step`` per line (``index`` of ``count`` lines in
    a panel, centred on the true value; in octaves when ``log``), so that lines at one x stay
    apart."""
    shift = (index - (count - 1) / 2) * step
    moved = points[x] * 2.0**shift if log else points[x] + shift
    return points.assign(**{x: moved})


def clip_percent(ax: Axes, axis: str = "y") -> None:
    """Keep a percentage axis within [-2, 102]: a wider interval runs off the panel's edge."""
    low, high = ax.get_ylim() if axis == "y" else ax.get_xlim()
    limits = (max(low, -2.0), min(high, 102.0))
    (ax.set_ylim if axis == "y" else ax.set_xlim)(*limits)


def panel_grid(count: int) -> tuple[int, int]:
    """Columns and rows of small multiples: as square as ``count`` allows, four columns at most."""
    columns = min(4, max(1, math.ceil(math.sqrt(count))))
    return columns, math.ceil(count / columns)


def label_outer(axes: np.ndarray, used: int, xlabel: str, ylabel: str) -> None:
    """Axis labels once: y on the first column, x under the lowest visible panel of each column."""
    columns = axes.shape[1]
    for index, ax in enumerate(axes.flat[:used]):
        if index % columns == 0:
            ax.set_ylabel(ylabel)
        if index + columns >= used:
            ax.set_xlabel(xlabel)
            ax.xaxis.set_tick_params(labelbottom=True)
