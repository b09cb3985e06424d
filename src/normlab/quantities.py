"""The quantities a run records per step or at its end: each one's column name, the label its
axes and table columns carry, its scale (fractions are shown in %), and the figures and tables
that draw it. Figures, tables and claims read names, labels and scales from here; the trainer's
per-step trace (:class:`normlab.metrics.Trace`) takes its columns from :data:`TRACED`. Imports
neither torch nor matplotlib.

To add a per-step metric:

1. compute it where its row is built (``Trainer`` rows, :mod:`normlab.evaluation`, or a mode's
   diagnostics) under a new column name; a traced one also goes into :data:`TRACED` and into
   the tensor ``Trainer._trace_values`` stacks, at the same position;
2. add a :class:`Quantity` to :data:`QUANTITIES` with that name, its label, ``percent=True`` for
   a fraction, and the names of the figures or tables (``normlab-plot`` names, ``summary``) that
   draw it; the figures that read :func:`drawn_in` pick it up, a figure with panels of its own
   lists it there too.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Quantity:
    name: str  # the column in metrics.csv, trace.csv or the summary's final numbers
    label: str
    percent: bool = False  # a fraction, shown ×100
    drawn: tuple[str, ...] = ()  # the figures and tables that draw it

    @property
    def scale(self) -> float:
        return 100.0 if self.percent else 1.0


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
        Quantity("r_clip_frac", "r clipped (% of channels)", True, ("renorm_internals",)),
        Quantity("d_clip_frac", "d clipped (% of channels)", True, ("renorm_internals",)),
        Quantity("rmax", "r_max", False, ("renorm_internals",)),
        Quantity("dmax", "d_max", False, ("renorm_internals",)),
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
