"""``normlab-plot``: figures and tables from run records, without wandb and without training.

Reads ``results/runs/...`` through :mod:`normlab.results` and writes, as PNG (200 dpi) and PDF:

- ``accuracy_vs_step`` (and ``accuracy_vs_step_non_iid``): held-out accuracy with population
  statistics against training step, one panel per batch size (Ioffe 2017, Figs. 1-3);
- ``accuracy_vs_batch_size``: final accuracy against batch size (Wu & He 2018, Fig. 1);
- ``accuracy_vs_values_per_channel``: final accuracy against the values behind each
  per-channel statistic (batch × positions), fully connected and conv nets on one scale;
- ``train_eval_gap``: train-mode minus eval-mode accuracy, and their KL, against batch size;
- ``divergence``, ``divergence_traces`` and ``blowup_mechanism``: divergence rates with Wilson
  intervals, the diverged runs' loss and parameter norm, and the bias/mean drift before a
  blow-up from ``trace.csv`` (Ioffe & Szegedy 2015, §2);
- ``decay_schedules``: accuracy and statistics mismatch over training per momentum schedule;
- ``mode_internals``: the quantities a mode declares against their bounds' schedules (renorm:
  fraction of clipped r and d against the rmax/dmax schedule);
- ``precise_statistics``: EMA against precisely recomputed population statistics (Wu &
  Johnson 2021) and their paired difference;
- ``ghost_batch``: accuracy against the statistics batch size of ghost batch norm;
- ``accuracy_by_setting`` and ``schedules_by_setting``: small multiples of final accuracy
  against batch size, a panel per setting, a line per label (and momentum schedule), diverged
  runs counted as failures at chance accuracy;
- ``switch_point``: accuracy against the fraction of training at which batch statistics give
  way to the population statistics, the running statistics frozen or updating;
- ``ablation``: the rows of MABN's ablation (Yan et al. 2020) as held-out error, the paper's
  numbers beside;

and ``summary.md``/``.tex``/``.csv`` (mean and 95 % interval over seeds per label and batch
size, divergence with Wilson intervals, parameter-norm growth) and ``divergence.md``/...

Layout: :mod:`~normlab.plots.style` (rcParams, palette from :mod:`normlab.labels`),
:mod:`~normlab.plots.runs` (what a figure needs; which runs are used and how they are grouped
is :mod:`normlab.grouping`, their labels and scales :mod:`normlab.quantities`),
:mod:`~normlab.plots.frames` (the numbers), :mod:`~normlab.plots.tables` (rendered by
:mod:`normlab.tables`), :mod:`~normlab.plots.draw` (shared drawing), one module per figure family,
:mod:`~normlab.plots.run` (one run's figure) and :mod:`~normlab.plots.cli`.
Each figure is a pure ``*_frame`` function and a ``plot_*`` function that returns a matplotlib
:class:`~matplotlib.figure.Figure` or raises :class:`Skip` saying which runs it needs.
"""

from normlab.grouping import prepare_runs, skipped_runs
from normlab.plots.ablation import plot_ablation
from normlab.plots.accuracy import (
    plot_accuracy_vs_batch_size,
    plot_accuracy_vs_step,
    plot_accuracy_vs_step_non_iid,
    plot_train_eval_gap,
)
from normlab.plots.channels import plot_accuracy_vs_values_per_channel
from normlab.plots.cli import FIGURES, main, make_figures, plot_results
from normlab.plots.decay import plot_decay_schedules
from normlab.plots.divergence import (
    plot_blowup_mechanism,
    plot_divergence,
    plot_divergence_traces,
)
from normlab.plots.frames import (
    ablation_frame,
    accuracy_by_setting_frame,
    accuracy_vs_batch_size_frame,
    accuracy_vs_step_frame,
    decay_schedules_frame,
    diverged_traces_frame,
    divergence_frame,
    divergence_table_frame,
    final_stats,
    ghost_batch_frame,
    mode_internals_frame,
    precise_statistics_frame,
    schedules_by_setting_frame,
    switch_point_frame,
    traced_runs,
    train_eval_gap_frame,
    values_per_channel_frame,
)
from normlab.plots.ghost import plot_ghost_batch
from normlab.plots.internals import plot_mode_internals
from normlab.plots.precise import plot_precise_statistics
from normlab.plots.run import run_figure
from normlab.plots.runs import Need, Skip
from normlab.plots.settings import plot_accuracy_by_setting, plot_schedules_by_setting
from normlab.plots.style import palette, save_figure
from normlab.plots.switch import plot_switch_point
from normlab.plots.tables import summary_display, summary_table, write_divergence, write_summary

__all__ = [
    "FIGURES",
    "Need",
    "Skip",
    "ablation_frame",
    "accuracy_by_setting_frame",
    "accuracy_vs_batch_size_frame",
    "accuracy_vs_step_frame",
    "decay_schedules_frame",
    "diverged_traces_frame",
    "divergence_frame",
    "divergence_table_frame",
    "final_stats",
    "ghost_batch_frame",
    "main",
    "make_figures",
    "mode_internals_frame",
    "palette",
    "plot_ablation",
    "plot_accuracy_by_setting",
    "plot_accuracy_vs_batch_size",
    "plot_accuracy_vs_step",
    "plot_accuracy_vs_step_non_iid",
    "plot_accuracy_vs_values_per_channel",
    "plot_blowup_mechanism",
    "plot_decay_schedules",
    "plot_divergence",
    "plot_divergence_traces",
    "plot_ghost_batch",
    "plot_mode_internals",
    "plot_precise_statistics",
    "plot_results",
    "plot_schedules_by_setting",
    "plot_switch_point",
    "plot_train_eval_gap",
    "precise_statistics_frame",
    "prepare_runs",
    "run_figure",
    "save_figure",
    "schedules_by_setting_frame",
    "skipped_runs",
    "summary_display",
    "summary_table",
    "switch_point_frame",
    "traced_runs",
    "train_eval_gap_frame",
    "values_per_channel_frame",
    "write_divergence",
    "write_summary",
]
