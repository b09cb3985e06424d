"""``run_figure``: one run's small figure (loss, held-out accuracy with population vs batch
statistics, mean shift against step), logged to wandb at the end of a run."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from normlab.grouping import finite
from normlab.plots.draw import step_axis
from normlab.plots.style import NEUTRAL, new_figure, palette, save_figure, style
from normlab.quantities import LABELS, scale_of

PANELS = (
    ("loss", (("loss", "-", "training loss"),)),
    (
        "val_acc_eval",
        (
            ("val_acc_eval", "-", "eval mode (population stats)"),
            ("val_acc_train_mode", "--", "train mode (batch stats)"),
        ),
    ),
    ("mean_shift", (("mean_shift", "-", "mean shift"),)),
)


def _color(metrics: pd.DataFrame) -> str:
    """The run's label colour when the frame carries its label (or mode), else neutral."""
    for column in ("norm_label", "config.norm.mode"):
        if column in metrics and len(metrics) and pd.notna(metrics[column].iloc[0]):
            label = str(metrics[column].iloc[0])
            return palette([label])[label].color
    return NEUTRAL


def run_figure(metrics: pd.DataFrame, path: Path) -> Path:
    """A small figure of one run from its metrics frame (``metrics.csv`` as read by pandas):
    training loss, held-out accuracy with population vs batch statistics, and the mean shift
    of the batch statistics, against step. Written to ``path`` (format from its suffix, PNG if
    none); returns the path written."""
    path = Path(path)
    path = path if path.suffix else path.with_suffix(".png")
    color = _color(metrics)
    step = pd.to_numeric(metrics.get("step", pd.Series(range(len(metrics))))).to_numpy(float)
    with style():
        figure, axes = new_figure(3, height=2.0)
        for ax, (name, lines) in zip(axes.flat, PANELS, strict=True):
            drawn = False
            for column, linestyle, label in lines:
                if column in metrics and metrics[column].notna().any():
                    values = finite(metrics[column]) * scale_of(column)
                    ax.plot(step, values, color=color, linestyle=linestyle, marker=".", label=label)
                    drawn = True
            if not drawn:
                ax.text(
                    0.5,
                    0.5,
                    "not logged for this run",
                    ha="center",
                    va="center",
                    transform=ax.transAxes,
                )
            elif len(lines) > 1:
                ax.legend(loc="best")
            step_axis(ax)
            ax.set_ylabel(LABELS[name])
        if "run_id" in metrics and len(metrics):
            figure.suptitle(str(metrics["run_id"].iloc[0]))
        return save_figure(figure, path)
