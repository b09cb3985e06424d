"""``normlab-plot RESULTS... --out DIR [--wandb] [--interval t|bootstrap]``: every figure the
results allow, the summary and divergence tables, and optionally the same in a wandb summary run.

Exit codes: 0 files written, 1 no run records under the given paths, 2 a path does not exist.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from normlab import stats
from normlab.grouping import pooled_keys, prepare_runs, skipped_runs
from normlab.plots.ablation import plot_ablation
from normlab.plots.accuracy import (
    plot_accuracy_vs_batch_size,
    plot_accuracy_vs_step,
    plot_accuracy_vs_step_non_iid,
    plot_train_eval_gap,
)
from normlab.plots.channels import plot_accuracy_vs_values_per_channel
from normlab.plots.decay import plot_decay_schedules
from normlab.plots.divergence import (
    plot_blowup_mechanism,
    plot_divergence,
    plot_divergence_traces,
)
from normlab.plots.frames import divergence_table_frame
from normlab.plots.ghost import plot_ghost_batch
from normlab.plots.internals import plot_mode_internals
from normlab.plots.precise import plot_precise_statistics
from normlab.plots.runs import Skip
from normlab.plots.settings import plot_accuracy_by_setting, plot_schedules_by_setting
from normlab.plots.style import save_figure
from normlab.plots.switch import plot_switch_point
from normlab.plots.tables import (
    has_divergence,
    summary_display,
    summary_table,
    write_divergence,
    write_summary,
)
from normlab.results import load_metrics, load_runs

FIGURES: dict[str, Callable[[pd.DataFrame, pd.DataFrame | None], Figure]] = {
    "accuracy_vs_step": plot_accuracy_vs_step,
    "accuracy_vs_step_non_iid": plot_accuracy_vs_step_non_iid,
    "accuracy_vs_batch_size": plot_accuracy_vs_batch_size,
    "accuracy_vs_values_per_channel": plot_accuracy_vs_values_per_channel,
    "accuracy_by_setting": plot_accuracy_by_setting,
    "train_eval_gap": plot_train_eval_gap,
    "divergence": plot_divergence,
    "divergence_traces": plot_divergence_traces,
    "blowup_mechanism": plot_blowup_mechanism,
    "decay_schedules": plot_decay_schedules,
    "schedules_by_setting": plot_schedules_by_setting,
    "mode_internals": plot_mode_internals,
    "precise_statistics": plot_precise_statistics,
    "ghost_batch": plot_ghost_batch,
    "switch_point": plot_switch_point,
    "ablation": plot_ablation,
}


FORMATS = ("png", "pdf")  # the files of every figure unless --formats says fewer
KNOWN_FORMATS = ("png", "pdf", "svg")


def _clear(out: Path, name: str) -> bool:
    stale = [p for p in (out / f"{name}.{f}" for f in KNOWN_FORMATS) if p.exists()]
    for path in stale:
        path.unlink()
    return bool(stale)


def _save(figure: Figure, out: Path, name: str, formats: Sequence[str]) -> list[Path]:
    return [save_figure(figure, out / f"{name}.{f}") for f in formats]


def make_figures(
    runs: pd.DataFrame,
    out: Path,
    report: Callable[[str], None] = print,
    formats: Sequence[str] = FORMATS,
) -> list[Path]:
    """Every figure of :data:`FIGURES` that ``runs`` allow, and the tables, into ``out``; one
    message through ``report`` per skipped figure or group of runs."""
    out.mkdir(parents=True, exist_ok=True)
    for message in skipped_runs(runs):
        report(message)
    pooled = pooled_keys(runs)
    if pooled:
        report(f"note: runs differing only in {', '.join(pooled)} are averaged together")
    used = prepare_runs(runs)
    metrics = load_metrics(runs=used, config_keys=("run_dir",)) if not used.empty else None
    written: list[Path] = []
    for name, plot in FIGURES.items():
        try:
            figure = plot(runs, metrics)
        except Skip as reason:
            removed = " (removed its stale files)" if _clear(out, name) else ""
            report(f"skipping {name} figure: {reason}{removed}")
            continue
        written += _save(figure, out, name, formats)
    if used.empty:
        report("skipping summary tables: no completed or diverged run")
        return written
    written += write_summary(summary_table(runs, metrics), out)
    divergence = divergence_table_frame(runs)
    if has_divergence(divergence):
        written += write_divergence(divergence, out)
    else:
        stale = [p for p in out.glob("divergence.*") if p.suffix in (".md", ".tex", ".csv")]
        for path in stale:
            path.unlink()
        removed = " (removed its stale files)" if stale else ""
        report(f"skipping divergence table: no run diverged or had parameter-norm growth{removed}")
    return written


def _load(*roots: str | Path) -> pd.DataFrame:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # incomplete runs are reported by make_figures
        return load_runs(*roots)


def reproduce(
    runs: pd.DataFrame,
    beside: Sequence[str | Path],
    out: Path,
    report: Callable[[str], None],
    formats: Sequence[str] = FORMATS,
) -> list[Path]:
    """``reproduction.md/.csv/.png/.pdf``: these runs beside the reference runs of ``beside``."""
    from normlab.plots.reproduction import (
        plot_reproduction,
        reproduction_frame,
        write_reproduction,
    )

    reference = _load(*beside)
    frame = reproduction_frame(runs, reference) if not reference.empty else pd.DataFrame()
    if frame.empty:
        report(f"skipping reproduction: no cell of these runs is in {', '.join(map(str, beside))}")
        return []
    written = write_reproduction(frame, out, runs, reference)
    figure = plot_reproduction(frame)
    written += _save(figure, out, "reproduction", formats)
    report(f"{int(frame['within'].sum())} of {len(frame)} cells inside the committed intervals")
    return written


def plot_results(
    *roots: str | Path,
    out: str | Path = "results/figures",
    report: Callable[[str], None] = print,
    wandb: bool = False,
    beside: Sequence[str | Path] = (),
    formats: Sequence[str] = FORMATS,
) -> list[Path]:
    """Load the run records under ``roots`` and write every figure (as each of ``formats``) and
    table into ``out``; with ``beside``, the reproduction table and figure against those
    reference runs; with ``wandb``, log them to a summary run too (:mod:`normlab.dashboard`)."""
    runs = _load(*roots)
    if runs.empty:
        return []
    written = make_figures(runs, Path(out), report, formats)
    if beside:
        written += reproduce(runs, beside, Path(out), report, formats)
    if wandb and not prepare_runs(runs).empty:
        from normlab import dashboard

        tables = {"summary": summary_display(summary_table(runs))}
        run_dir = dashboard.log_summary(runs, "plots", written, tables, Path(roots[0]))
        report(f"logged {len(tables)} table(s) and the figures to wandb: {run_dir}")
    return written


def _formats(text: str) -> tuple[str, ...]:
    formats = tuple(f.strip().lstrip(".") for f in text.split(",") if f.strip())
    unknown = [f for f in formats if f not in KNOWN_FORMATS]
    if unknown or not formats:
        raise argparse.ArgumentTypeError(
            f"--formats={text}: allowed: a comma-separated list of {', '.join(KNOWN_FORMATS)}"
        )
    return formats


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="normlab-plot", description="Figures and summary tables from normlab run records."
    )
    parser.add_argument(
        "results",
        nargs="+",
        type=Path,
        help="results directories (a sweep, results/runs, or one run)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("results/figures"),
        help="where figures and tables go (default: results/figures)",
    )
    parser.add_argument(
        "--wandb",
        action="store_true",
        help="also log figures and tables to a wandb summary run in the sweep's group "
        "(offline unless WANDB_MODE says otherwise)",
    )
    parser.add_argument(
        "--beside",
        nargs="+",
        type=Path,
        default=[],
        help="reference records of the same study (the committed ones): write reproduction.md "
        "and a figure of these runs beside them, within their intervals?",
    )
    parser.add_argument(
        "--interval",
        choices=stats.METHODS,
        default="t",
        help="interval of the means over seeds: t (default) or a percentile bootstrap",
    )
    parser.add_argument(
        "--formats",
        type=_formats,
        default=FORMATS,
        help=f"the files of each figure, comma-separated from {', '.join(KNOWN_FORMATS)} "
        f"(default: {','.join(FORMATS)})",
    )
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.results if not p.exists()]
    if missing:
        print(f"normlab-plot: no such directory: {', '.join(missing)}", file=sys.stderr)
        return 2
    with stats.interval_method(args.interval):
        written = plot_results(
            *args.results,
            out=args.out,
            wandb=args.wandb,
            beside=args.beside,
            formats=args.formats,
        )
    if not written:
        print(
            f"normlab-plot: no run records under {', '.join(map(str, args.results))}",
            file=sys.stderr,
        )
        return 1
    print(f"wrote {len(written)} files:")
    for path in written:
        print(f"  {path}")
    return 0
