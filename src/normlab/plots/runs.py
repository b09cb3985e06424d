"""What a figure needs from the runs, and the registry's order of labels.

Which runs are used and how they are grouped is :mod:`normlab.grouping` (shared with the
tables and the claims); here a figure states the runs it needs as a :class:`Need`, and
:func:`select` returns them or raises :class:`Skip` with the need's text. :func:`order` sorts
labels as the mode registry lists them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd

from normlab import grouping
from normlab.grouping import column_of
from normlab.plots.style import label_rank


class Skip(Exception):  # not an error: the results do not hold what a figure needs
    """A figure cannot be drawn from these results; ``str()`` says what is missing."""


@dataclass(frozen=True)
class Need:
    """The runs a figure draws: ``text`` names them ("runs with ghost batches"), ``keep``
    picks them from prepared runs."""

    text: str
    keep: Callable[[pd.DataFrame], pd.Series]


def select(used: pd.DataFrame, need: Need) -> pd.DataFrame:
    """The prepared runs ``need`` keeps; :class:`Skip` saying what is needed if none."""
    kept = used.loc[need.keep(used)] if not used.empty else used
    if kept.empty:
        raise Skip(f"needs {need.text}; none in these results")
    return kept


def logs(column: str) -> Callable[[pd.DataFrame], pd.Series]:
    """Runs whose record has a finite final ``column``."""
    return lambda used: pd.to_numeric(column_of(used, column), errors="coerce").notna()


def order(frame: pd.DataFrame, by: Sequence[str] = ()) -> pd.DataFrame:
    """Labels in the registry's order, settings by value, then ``by``; drops ``setting_order``."""
    return grouping.order(frame, by, rank=label_rank)
