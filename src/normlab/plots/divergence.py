"""Divergence figures.

- ``divergence``: how often runs of each label diverged per learning rate, depth, bias or
  momentum schedule (a heat map; each cell ``k/n``, the 95 % Wilson interval of the rate, and
  how many runs had parameter-norm growth, which is recorded but is not a blow-up);
- ``divergence_traces``: loss and parameter norm of the diverged runs at every logged row;
- ``blowup_mechanism``: the counteraction of Ioffe & Szegedy 2015, §2, from ``trace.csv`` —
  per-step loss, pre-norm bias norm, pre-norm mean drift and parameter norm of the runs that
  blew up, beside the runs of the same setting that did not, the divergence step marked.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import LogFormatter

from normlab.grouping import finite, fmt, missing, sort_key
from normlab.plots import draw
from normlab.plots.frames import (
    DIVERGENCE_KEYS,
    TRACE_METRICS,
    diverged_traces_frame,
    divergence_frame,
    traced_runs,
)
from normlab.plots.runs import Skip
from normlab.plots.style import NEUTRAL, new_figure, ordered, styled
from normlab.quantities import LABELS, drawn_in

MAX_SETTINGS = 4  # rows of the blow-up figure; further settings are named in the skip message


@styled
def plot_divergence(runs: pd.DataFrame, metrics: pd.DataFrame | None = None) -> Figure:
    """Fraction of runs diverged: a heat map of label × value per varied key."""
    frame = divergence_frame(runs)
    if frame.empty:
        raise Skip(f"needs runs that vary {', '.join(DIVERGENCE_KEYS.values())}")
    keys = list(dict.fromkeys(frame["key"]))
    modes = ordered(frame["mode"])
    figure, axes = new_figure(len(keys), height=1.0 + 0.42 * len(modes))
    image = None
    for ax, key in zip(axes.flat, keys, strict=True):
        image = _heat_map(ax, frame.loc[frame["key"] == key], modes)
        ax.set_xlabel(DIVERGENCE_KEYS[key])
    figure.colorbar(
        image,
        ax=axes.ravel().tolist(),
        shrink=0.9,
        label="fraction of runs diverged",
    )
    draw.legend(
        figure,
        [
            Line2D(
                [],
                [],
                linestyle="",
                label="cells: diverged k/n, [95 % Wilson interval], "
                "g = runs with parameter-norm growth",
            )
        ],
    )
    return figure


def _heat_map(ax: Axes, part: pd.DataFrame, modes: list[str]):
    values = sorted(dict.fromkeys(part["value"]), key=sort_key)
    grid = np.full((len(modes), len(values)), np.nan)
    for _, cell in part.iterrows():
        i, j = modes.index(cell["mode"]), values.index(cell["value"])
        grid[i, j] = cell["fraction"]
        text = f"{cell['n_diverged']}/{cell['n']}\n[{cell['low']:.2f}, {cell['high']:.2f}]"
        if cell["n_param_growth"]:
            text += f"\ng {cell['n_param_growth']}/{cell['n']}"
        ax.text(
            j,
            i,
            text,
            ha="center",
            va="center",
            fontsize=5.5,
            color="black" if cell["fraction"] > 0.5 else "white",
        )
    image = ax.imshow(grid, vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(values)), [fmt(v) for v in values])
    ax.set_yticks(range(len(modes)), modes)
    ax.grid(False)
    return image


def _log_axis(ax: Axes) -> None:
    ax.set_yscale("log")
    # plain numbers (8.6, 1e+03), also on the minor ticks of a range under a decade
    ax.yaxis.set_major_formatter(LogFormatter())
    ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.4)))


@styled
def plot_divergence_traces(runs: pd.DataFrame, metrics: pd.DataFrame | None = None) -> Figure:
    """Loss and parameter norm (log y) of the diverged runs, the divergence step dotted."""
    rows = diverged_traces_frame(runs, metrics)
    if rows.empty:
        raise Skip("needs runs that diverged; none in these results")
    names = [m for m in drawn_in("divergence_traces") if m in rows]
    if not names:
        raise Skip("the diverged runs logged neither loss nor param_norm")
    colors = draw.palette_of(rows)
    figure, axes = new_figure(len(names), sharex=True)
    blown = False
    for ax, metric in zip(axes.flat, names, strict=True):
        for _, run in rows.groupby("run_dir", sort=True):
            blown |= _draw_blow_up(ax, run, metric, colors[run["mode"].iloc[0]].color)
        _log_axis(ax)
        draw.step_axis(ax)
        ax.set_ylabel(LABELS[metric] + " (log scale)")
    handles = draw.mode_handles(colors)
    handles.append(Line2D([], [], color=NEUTRAL, linestyle=":", label="divergence step"))
    if blown:
        handles.append(_top_handle())
    draw.legend(figure, handles)
    return figure


def _top_handle() -> Line2D:
    return Line2D(
        [], [], color=NEUTRAL, marker="^", linestyle="", label="non-finite value (drawn at the top)"
    )


def _draw_blow_up(
    ax: Axes, run: pd.DataFrame, metric: str, color: str, linewidth: float = 0.8
) -> bool:
    """One diverged run's ``metric``; a non-finite last value (the divergence row) is a ▲ at
    the top of the axes, the divergence step a dotted line."""
    step = run["step"].to_numpy(float)
    values = finite(run[metric])
    values[values <= 0] = np.nan
    ax.plot(step, values, color=color, linewidth=linewidth, marker=".", markersize=2)
    blown = bool(np.isnan(values[-1])) and bool(np.isfinite(values).any())
    if blown:
        mark_nonfinite(ax, step[-1], color)
    divergence_step = run["divergence_step"].iloc[0]
    if not missing(divergence_step):
        ax.axvline(float(divergence_step), color=color, linestyle=":", linewidth=0.8)
    return blown


@styled
def plot_blowup_mechanism(
    runs: pd.DataFrame, metrics: pd.DataFrame | None = None, traces: pd.DataFrame | None = None
) -> Figure:
    """Per-step loss, pre-norm bias norm, pre-norm mean drift and parameter norm from
    ``trace.csv``: a row per setting where a traced run diverged, its blow-ups (thick, ending
    at the divergence step) beside the runs of that setting that did not diverge (thin)."""
    rows = traced_runs(runs, traces)
    if rows.empty:
        raise Skip(
            "needs runs with a trace.csv (trace.steps > 0) among which one diverged; "
            "none in these results"
        )
    names = [m for m in TRACE_METRICS if m in rows and rows[m].notna().any()]
    settings = list(dict.fromkeys(rows["setting"]))[:MAX_SETTINGS]
    colors = draw.palette_of(rows)
    figure, axes = new_figure(len(names), len(settings), height=2.0, sharex="row")
    for row_axes, setting in zip(axes, settings, strict=True):
        part = rows.loc[rows["setting"] == setting]
        for ax, metric in zip(row_axes, names, strict=True):
            draw.step_axis(ax)
            ax.set_ylabel(LABELS[metric])
            if not (pd.to_numeric(part[metric], errors="coerce") > 0).any():
                # e.g. no bias feeds a norm in this setting: nothing to draw on a log axis
                ax.text(
                    0.5,
                    0.5,
                    "not recorded here",
                    ha="center",
                    va="center",
                    transform=ax.transAxes,
                    color=NEUTRAL,
                )
                continue
            for _, run in part.groupby("run_dir", sort=False):
                _draw_trace(ax, run, metric, colors[run["mode"].iloc[0]].color)
            _log_axis(ax)
        if setting:
            row_axes[0].set_title(setting, loc="left")
    handles = draw.mode_handles(colors)
    handles += [
        Line2D([], [], color=NEUTRAL, linewidth=1.4, label="run that blew up"),
        Line2D([], [], color=NEUTRAL, linewidth=0.6, label="run of the same setting that did not"),
        Line2D([], [], color=NEUTRAL, linestyle=":", label="divergence step"),
        Line2D([], [], color="0.8", linestyle="", marker="|", label="gap: steps not traced"),
        _top_handle(),
    ]
    draw.legend(figure, handles)
    return figure


def _draw_trace(ax: Axes, run: pd.DataFrame, metric: str, color: str) -> None:
    """One run's traced ``metric``, broken where the trace skips steps (first and last
    ``trace.steps`` steps only)."""
    run = run.sort_values("step", kind="stable").drop_duplicates("step")
    step = run["step"].to_numpy(float)
    values = finite(run[metric])
    values[values <= 0] = np.nan
    gaps = np.flatnonzero(np.diff(step) > 1) + 1
    diverged = bool(run["diverged"].iloc[0])
    width = 1.4 if diverged else 0.6
    for piece_step, piece in zip(np.split(step, gaps), np.split(values, gaps), strict=True):
        ax.plot(piece_step, piece, color=color, linewidth=width)
    for gap in gaps:
        ax.axvline(step[gap], color="0.8", linewidth=0.5)
    if diverged and np.isnan(values[-1]):
        mark_nonfinite(ax, step[-1], color)
    if diverged and not missing(run["divergence_step"].iloc[0]):
        ax.axvline(float(run["divergence_step"].iloc[0]), color=color, linestyle=":", linewidth=0.8)


def mark_nonfinite(ax: Axes, step: float, color: str) -> None:
    """A ▲ at the top of the axes where a run's value became non-finite."""
    ax.plot(step, 0.97, marker="^", color=color, transform=ax.get_xaxis_transform(), clip_on=False)
