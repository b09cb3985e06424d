"""The quantities a run records per step or at its end: each one's column name, the label its
axes and table columns carry, its scale (fractions are shown in %), and the figures and tables
that draw it. Figures, tables and claims read names, labels and scales from here; the trainer's
per-step trace (:class:`normlab.metrics.Trace`) takes its columns from :data:`TRACED`. Imports
neither torch nor matplotlib.

:data:`QUANTITIES` are every mode's. A mode's own (renorm's clip fractions) are declared where
the mode is registered (``Mode.quantities``, :mod:`normlab.norms.registry`); each run's
``summary.json`` holds its mode's under :data:`DECLARED` (:meth:`Quantity.declaration`), and
:func:`declared` reads them back from the records.

To add a per-step metric:

1. compute it where its row is built (``Trainer`` rows, :mod:`normlab.evaluation`, or a mode's
   diagnostics) under a new column name; a traced one also goes into :data:`TRACED` and into
   the tensor ``Trainer._trace_values`` stacks, at the same position;
2. add a :class:`Quantity` to :data:`QUANTITIES` with that name, its label, ``percent=True`` for
   a fraction, and the names of the figures or tables (``normlab-plot`` names, ``summary``) that
   draw it; the figures that read :func:`drawn_in` pick it up, a figure with panels of its own
   lists it there too. A quantity only one mode logs is that mode's: it goes into its
   ``Mode.quantities`` instead, with ``bound`` naming the schedule it is drawn against.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Quantity:
    name: str  # the column in metrics.csv, trace.csv or the summary's final numbers
    label: str
    percent: bool = False  # a fraction, shown ×100
    drawn: tuple[str, ...] = ()  # the figures and tables that draw it
    bound: str | None = None  # a mode's own: the column it is drawn against (its schedule)

    @property
    def scale(self) -> float:
        return 100.0 if self.percent else 1.0

    def declaration(self) -> dict[str, Any]:
        """This quantity as a run's record declares it (an entry of :data:`DECLARED`)."""
        return {
            "name": self.name,
            "label": self.label,
            "percent": self.percent,
            "bound": self.bound,
        }


# The summary.json field (and runs column) holding the quantities a run's mode declares: a list
# of :meth:`Quantity.declaration`, in the mode's order; the runs table holds it as JSON text.
DECLARED = "norm_quantities"


ACCURACY_FIGURES = (
    "accuracy_vs_step",
    "accuracy_vs_step_non_iid",
    "accuracy_vs_batch_size",
    "accuracy_vs_values_per_channel",
)
TRACE_FIGURES = ("divergence_traces", "blowup_mechanism")

QUANTITIES: dict[str, Quantity] = {
    q.name: q
    for q in (
        Quantity(
            "val_acc_eval",
            "held-out accuracy (%)",
            True,
            (*ACCURACY_FIGURES, "decay_schedules", "precise_statistics", "ghost_batch", "run"),
        ),
        Quantity(
            "val_acc_train_mode", "held-out acc., train mode (%)", True, ("ghost_batch", "run")
        ),
        Quantity("gap_train_minus_eval", "train − eval mode acc. (pp)", True, ("train_eval_gap",)),
        Quantity("kl_train_eval", "KL(train ‖ eval mode) (nats)", False, ("train_eval_gap",)),
        Quantity("best_val_acc_eval", "best held-out accuracy (%)", True),
        Quantity("mean_shift", "mean shift |μ_B − μ| / σ", False, ("decay_schedules", "run")),
        Quantity("std_ratio", "std ratio σ_B / σ", False, ("decay_schedules",)),
        Quantity("loss", "training loss", False, (*TRACE_FIGURES, "run")),
        Quantity("prenorm_bias_norm", "pre-norm bias norm ‖b‖", False, ("blowup_mechanism",)),
        Quantity(
            "prenorm_mean_rms", "pre-norm mean drift (RMS of μ_B)", False, ("blowup_mechanism",)
        ),
        Quantity("param_norm", "parameter norm ‖θ‖", False, TRACE_FIGURES),
        Quantity(
            "val_acc_precise", "held-out acc., precise stats (%)", True, ("precise_statistics",)
        ),
        Quantity(
            "precise_minus_eval", "precise − EMA stats acc. (pp)", True, ("precise_statistics",)
        ),
        Quantity("precise_seconds", "precise-BN time per eval. (s)"),
    )
}
LABELS = {name: q.label for name, q in QUANTITIES.items()}

# The per-step trace's columns (``trace.csv``), in the order the trainer stacks them.
TRACED = ("loss", "param_norm", "prenorm_bias_norm", "prenorm_mean_rms")
# The summary table's metrics; the precise ones only where some run recomputed statistics.
SUMMARY = (
    "val_acc_eval",
    "val_acc_train_mode",
    "gap_train_minus_eval",
    "kl_train_eval",
    "best_val_acc_eval",
)
SUMMARY_PRECISE = ("val_acc_precise", "precise_seconds")


def scale_of(name: str) -> float:
    """100 for a fraction shown in %, else 1 (names outside the registry: 1)."""
    quantity = QUANTITIES.get(name)
    return quantity.scale if quantity is not None else 1.0


def drawn_in(figure: str) -> tuple[str, ...]:
    """The quantities ``figure`` draws, in the registry's order."""
    return tuple(name for name, q in QUANTITIES.items() if figure in q.drawn)


def declared(declarations: Iterable[Any]) -> dict[str, Quantity]:
    """The quantities that runs' modes declare, by name, each once, in the order first declared.
    Each of ``declarations`` is a record's :data:`DECLARED`: its list, that list as JSON text, or
    nothing (None, NaN: a record without one declares none)."""
    merged: dict[str, Quantity] = {}
    for value in declarations:
        if isinstance(value, str):
            value = json.loads(value)
        if not isinstance(value, list):
            continue
        for entry in value:
            quantity = Quantity(
                entry["name"], entry["label"], bool(entry["percent"]), bound=entry["bound"]
            )
            merged.setdefault(quantity.name, quantity)
    return merged
