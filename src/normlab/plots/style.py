"""How every figure looks: one rcParams bundle, the palette of :mod:`normlab.labels`, fixed sizes,
and deterministic files (the Agg canvas, no timestamps or software versions in PNG/PDF/SVG)."""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

import normlab.labels
from normlab.labels import Style

PANEL_WIDTH, PANEL_HEIGHT = 3.3, 2.3  # inches: one panel reads at single-column width
DPI = 200
RC_PARAMS = {
    "font.family": "DejaVu Sans",
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "legend.frameon": False,
    "lines.linewidth": 1.2,
    "lines.markersize": 4,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.linewidth": 0.4,
    "grid.alpha": 0.4,
    "savefig.dpi": DPI,
    "pdf.fonttype": 42,
    "svg.hashsalt": "normlab",
    "image.cmap": "cividis",
}
LINESTYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3)))
NEUTRAL = "0.35"  # legend entries that stand for a line style or marker, not a mode
# The second of two metrics drawn per mode: half-filled markers, so that a lone point (no line
# to show its style) still says which it is; hollow markers already mean "some seeds diverged".
SECOND = {"fillstyle": "top", "markerfacecoloralt": "white", "markersize": 5}


def palette(labels: Iterable[str]) -> dict[str, Style]:
    """A :class:`Style` for every label among ``labels`` (a built-in mode's own, distinct extras
    for the others)."""
    labels = list(dict.fromkeys(map(str, labels)))
    styles = normlab.labels.palette(labels)
    return {label: styles[label] for label in labels}


def label_rank(label: str) -> tuple[int, str]:
    """Sort key of a label: the built-in labels' order, then labels from outside it by name."""
    order = normlab.labels.label_order()
    return (order.index(label), "") if label in order else (len(order), label)


def ordered(labels: Iterable[str]) -> list[str]:
    return sorted(dict.fromkeys(map(str, labels)), key=label_rank)


def linestyle(index: int) -> Any:
    return LINESTYLES[index % len(LINESTYLES)]


@contextlib.contextmanager
def style() -> Iterator[None]:
    """Matplotlib's defaults plus :data:`RC_PARAMS`, whatever the user's matplotlibrc says."""
    with matplotlib.rc_context():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", matplotlib.MatplotlibDeprecationWarning)
            matplotlib.rcdefaults()
        matplotlib.rcParams.update(RC_PARAMS)
        yield


def styled(function: Callable[..., Figure]) -> Callable[..., Figure]:
    """Build the figure under :func:`style`: artists take their fonts and sizes when created."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Figure:
        with style():
            return function(*args, **kwargs)

    return wrapper


def new_figure(
    panels: int, rows: int = 1, height: float = PANEL_HEIGHT, **subplots: Any
) -> tuple[Figure, np.ndarray]:
    """A figure of ``rows`` × ``panels`` axes, :data:`PANEL_WIDTH` wide each (Agg canvas)."""
    figure = Figure(figsize=(PANEL_WIDTH * panels, height * rows), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, panels, squeeze=False, **subplots)
    return figure, axes


def _metadata(suffix: str) -> dict[str, Any]:
    return {
        ".png": {"Software": None},
        ".pdf": {"CreationDate": None, "ModDate": None},
        ".svg": {"Date": None},
    }.get(suffix, {})


def save_figure(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with style():
        # "tight" grows the canvas to hold the legend placed below the panels
        figure.savefig(
            path, dpi=DPI, metadata=_metadata(path.suffix), bbox_inches="tight", pad_inches=0.03
        )
    return path
