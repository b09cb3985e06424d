"""The labels runs are drawn under and how each is drawn: every built-in mode's legend labels
with their colour and marker (:data:`BUILT_IN`, in the order figures and tables list them), the
colours and markers labels from outside the package take in turn, and the label of runs whose
model centres its weights. Written here once: the mode registry (:mod:`normlab.norms.registry`)
gives each built-in mode its styles from :data:`BUILT_IN`, and the figures and claims, which
read records, take labels and colours from here without importing torch.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Style:
    """How runs are drawn: the legend label, a colour and a marker."""

    label: str
    color: str
    marker: str


# What a run's label gains where its model centres the weights before each norm
# (model.centred_weights): runs of one mode with and without are drawn and compared apart.
CENTRED_WEIGHTS = "centred weights"


def centred_label(label: str) -> str:
    """The label of runs drawn under ``label`` whose model centres its pre-norm weights."""
    return f"{label} + {CENTRED_WEIGHTS}"


# Each built-in mode's styles by mode name, its default label first. The colours are Okabe &
# Ito (2008) and Tol's muted scheme; mabn's centred variant is the full method as the paper
# trains it (the layer after centred weights, CenConv2d).
BUILT_IN: dict[str, tuple[Style, ...]] = {
    "batch": (Style("batch", "#0072B2", "o"), Style("batch (ghost)", "#56B4E9", "v")),
    "moving_average": (
        Style("moving_average", "#D55E00", "s"),
        Style("moving_average (grad through batch)", "#882255", "d"),
    ),
    "renorm": (Style("renorm", "#009E73", "^"),),
    "online": (Style("online", "#CC79A7", "D"),),
    "mabn": (Style("mabn", "#44AA99", "H"), Style(centred_label("mabn"), "#117733", "H")),
    "group": (Style("group", "#E69F00", "P"),),
    "layer": (Style("layer", "#000000", "X"),),
    "none": (Style("none", "#999999", "."),),
}

# Runs of modes from outside the package take these, in order of their labels, so they never
# share a colour or marker with a built-in.
EXTRA_COLORS = ("#7F3C8D", "#3969AC", "#11A579", "#E73F74", "#80BA5A", "#F0E442")
EXTRA_MARKERS = ("*", "h", "p", "<", ">", "8")

# what the schedules figure draws beside the labels run under several momentum schedules: batch
# statistics, and Batch Renormalization, which corrects them towards the moving averages
SCHEDULE_BASELINES = ("batch", "renorm")


def styles() -> dict[str, Style]:
    """Every built-in style by label, in the order figures and tables list them."""
    return {s.label: s for mode in BUILT_IN.values() for s in mode}


def label_order() -> tuple[str, ...]:
    """The built-in labels, in the order figures and tables list modes."""
    return tuple(styles())


def palette(labels: Iterable[str]) -> dict[str, Style]:
    """A style for every label: a built-in one's own; the others, sorted, the extras in turn."""
    known = styles()
    others = sorted(set(labels) - set(known))
    extra = {
        label: Style(
            label, EXTRA_COLORS[i % len(EXTRA_COLORS)], EXTRA_MARKERS[i % len(EXTRA_MARKERS)]
        )
        for i, label in enumerate(others)
    }
    return {**known, **extra}
