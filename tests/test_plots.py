"""Figures and tables from a small results set written by hand in the trainer's record format.

Every expected number below is worked out by hand from the values in :data:`RUNS` and the
per-step formulas in :func:`metric_rows`, not by the aggregation code under test. Intervals are
95 % Student t intervals, ``mean ± t(0.975, n-1) · s / √n``, with t from a printed t table
(:data:`T975`); rates carry Wilson intervals worked out from the score formula by hand.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from statistics import mean, stdev

import pandas as pd
import pytest
import yaml
from records import RUNNING_STATS, migration_script, norm_node, write_record

from normlab import labels, plots
from normlab.norms import registry
from normlab.results import load_runs

STEPS = (0, 10, 20)
# Student t, 0.975 quantile, by degrees of freedom (any t table, e.g. NIST/SEMATECH e-Handbook
# of Statistical Methods, Table 1.3.6.7.2)
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776}
RMAX = {0: 1.0, 10: 2.0, 20: 3.0}
DMAX = {0: 0.0, 10: 2.5, 20: 5.0}

# mode, batch size, seed, momentum kind, status, final val_acc_eval, final gap, final kl, extra
RUNS = [
    ("batch", 4, 0, "constant", "completed", 0.60, 0.10, 0.20, {}),
    ("batch", 4, 1, "constant", "completed", 0.62, 0.12, 0.30, {}),
    ("batch", 4, 2, "constant", "completed", 0.67, 0.08, 0.40, {}),
    ("batch", 32, 0, "constant", "completed", 0.80, 0.02, 0.05, {}),
    ("batch", 32, 1, "constant", "completed", 0.84, 0.04, 0.07, {}),
    ("batch", 32, 3, "constant", "failed", 0.50, 0.00, 0.00, {}),
    ("batch", 32, 0, "constant", "completed", 0.78, 0.01, 0.02, {"virtual_batch_size": 8}),
    ("renorm", 4, 0, "constant", "completed", 0.64, 0.05, 0.10, {}),
    ("renorm", 4, 1, "constant", "completed", 0.66, 0.03, 0.12, {}),
    ("renorm", 4, 2, "constant", "incomplete", 0.50, 0.00, 0.00, {}),
    ("renorm", 32, 0, "constant", "completed", 0.81, 0.01, 0.03, {}),
    ("renorm", 32, 1, "constant", "completed", 0.83, 0.03, 0.05, {}),
    ("moving_average", 4, 0, "constant", "completed", 0.40, 0.00, 0.00, {}),
    ("moving_average", 4, 1, "constant", "completed", 0.46, 0.00, 0.00, {}),
    ("moving_average", 4, 2, "constant", "diverged", 0.10, 0.00, 0.00, {}),
    ("moving_average", 4, 0, "cosine", "completed", 0.50, 0.00, 0.00, {}),
    ("moving_average", 4, 1, "cosine", "completed", 0.54, 0.00, 0.00, {}),
]
NON_IID_RUNS = [
    ("batch", 4, 0, "constant", "completed", 0.30, 0.20, 0.50, {"sampler": "non_iid"}),
    ("batch", 4, 1, "constant", "completed", 0.36, 0.22, 0.70, {"sampler": "non_iid"}),
]
# extra "precise": the run set eval.precise_bn and logs val_acc_precise = val_acc_eval + this at
# every evaluation; "precise_bn" alone: it asked, but a mode without norm layers logs nothing.
PRECISE_RUNS = [
    ("batch", 4, 0, "constant", "completed", 0.60, 0.10, 0.20, {"precise": 0.05}),
    ("batch", 4, 1, "constant", "completed", 0.62, 0.12, 0.30, {"precise": 0.02}),
    ("batch", 4, 2, "constant", "diverged", 0.10, 0.00, 0.00, {"precise": 0.00}),
    ("batch", 32, 0, "constant", "completed", 0.80, 0.02, 0.05, {"precise": 0.01}),
    ("batch", 32, 1, "constant", "completed", 0.84, 0.04, 0.07, {"precise": -0.01}),
    ("renorm", 4, 0, "constant", "completed", 0.64, 0.05, 0.10, {"precise": 0.02}),
    ("renorm", 4, 1, "constant", "completed", 0.66, 0.03, 0.12, {"precise": 0.04}),
    ("none", 4, 0, "constant", "completed", 0.30, 0.00, 0.00, {"precise_bn": True}),
    ("batch", 64, 0, "constant", "completed", 0.85, 0.01, 0.02, {}),
]
GHOST_RUNS = [
    ("batch", 32, 0, "constant", "completed", 0.70, 0.10, 0.20, {"virtual_batch_size": 4}),
    ("batch", 32, 1, "constant", "completed", 0.74, 0.08, 0.20, {"virtual_batch_size": 4}),
    ("batch", 32, 0, "constant", "completed", 0.76, 0.04, 0.10, {"virtual_batch_size": 8}),
    ("batch", 32, 1, "constant", "completed", 0.79, 0.05, 0.10, {"virtual_batch_size": 8}),
    ("batch", 32, 2, "constant", "diverged", 0.10, 0.00, 0.00, {"virtual_batch_size": 8}),
    ("batch", 32, 0, "constant", "completed", 0.80, 0.02, 0.05, {}),
    ("batch", 32, 1, "constant", "completed", 0.84, 0.04, 0.07, {}),
    ("batch", 64, 0, "constant", "completed", 0.72, 0.08, 0.20, {"virtual_batch_size": 8}),
    ("batch", 64, 1, "constant", "completed", 0.75, 0.07, 0.20, {"virtual_batch_size": 8}),
    (
        "batch",
        32,
        0,
        "constant",
        "completed",
        0.60,
        0.20,
        0.30,
        {"virtual_batch_size": 8, "lr": 0.05},
    ),
    ("batch", 16, 0, "constant", "completed", 0.78, 0.03, 0.05, {}),  # no ghost run at 16
    ("renorm", 32, 0, "constant", "completed", 0.81, 0.01, 0.03, {}),  # not batch norm
]
FIGURES = (
    "accuracy_vs_step",
    "accuracy_vs_batch_size",
    "accuracy_vs_values_per_channel",
    "train_eval_gap",
    "divergence",
    "divergence_traces",
    "decay_schedules",
    "schedules_by_setting",
    "mode_internals",
    "ghost_batch",
)
TABLES = ("md", "tex", "csv")


def config(mode, batch_size, seed, kind, extra):
    """The resolved config in the new record format: only what the mode uses (``momentum`` for
    modes with running statistics, ``renorm`` for renorm)."""
    momentum = {
        "kind": kind,
        "value": 0.1 if kind == "constant" else None,
        "start": 0.5 if kind == "cosine" else None,
        "end": 0.01 if kind == "cosine" else None,
        "begin": 0.0,
        "finish": 1.0,
        "unit": "fraction",
        "knots": None,
        "floor": 0.0,
        "convention": "momentum",
    }
    node = {
        "norm": norm_node(mode, extra.get("virtual_batch_size")),
        "data": {
            "name": "mnist1d",
            "sampler": extra.get("sampler", "iid"),
            "classes_per_batch": 2,
            "drop_last": True,
        },
        "model": {
            "name": extra.get("model", "mlp"),
            "depth": 3,
            "width": 64,
            "bias_before_norm": False,
        },
        "optim": {
            "name": "sgd",
            "lr": extra.get("lr", 0.1),
            "momentum": 0.9,
            "milestones": [0.5, 0.75],
        },
        "eval": {
            "train_subset": 1000,
            "eval_batch_size": 1000,
            "precise_bn": "precise" in extra or extra.get("precise_bn", False),
            "precise_batches": 50,
        },
        "paths": {"results": "/somewhere/else", "runs": "/somewhere/else/runs"},
        "batch_size": batch_size,
        "seed": seed,
        "steps": 20,
        "eval_every": 10,
        "sweep": "study",
        "tags": [],
    }
    if mode in RUNNING_STATS:
        node["momentum"] = momentum
    if mode == "renorm":
        node["norm"]["rmax"] = {"kind": "piecewise", "knots": [[0.0, 1.0], [1.0, 3.0]]}
        node["norm"]["dmax"] = {"kind": "piecewise", "knots": [[0.0, 0.0], [1.0, 5.0]]}
    return node


def label(mode, extra):
    """The label the trainer records (``norm_label``): ghost batch norm is its own."""
    return "batch (ghost)" if "virtual_batch_size" in extra else mode


def metric_rows(mode, seed, status, acc, gap, kl, precise=None):
    """The rows the trainer would log: accuracy 0.1 at step 0, ``acc - 0.1`` at 10, ``acc``
    at 20; mean_shift ``0.3 + 0.1 seed`` at 10 and ``0.2 + 0.1 seed`` at 20; std_ratio
    ``1 + 0.05 seed``; renorm: r_clip_frac ``0.5 + 0.1 seed`` at 10, ``0.2 + 0.1 seed`` at 20,
    d_clip_frac half of it; with ``precise``: val_acc_precise ``val_acc_eval + precise`` and
    precise_seconds ``0.01 (1 + step / 10) + 0.001 seed`` (0.01, 0.02, 0.03 at steps 0, 10,
    20). A diverged run logs steps 0, 10 and its divergence row at 15."""
    steps = (
        (0, 10, 15)
        if status == "diverged"
        else STEPS[:2]
        if status in ("failed", "incomplete")
        else STEPS
    )
    rows = []
    for step in steps:
        row = {"step": step, "lr": 0.1, "momentum": 0.1}
        if mode == "renorm":
            row.update(rmax=RMAX.get(step, 2.5), dmax=DMAX.get(step, 3.75))
        val_acc = {0: 0.1, 10: acc - 0.1, 20: acc}.get(step, acc)
        if step:
            row.update(
                loss=1.2 if step == 10 else 0.8,
                train_acc=val_acc,
                grad_norm=1.0,
                mean_shift=(0.3 if step == 10 else 0.2) + 0.1 * seed,
                std_ratio=1.0 + 0.05 * seed,
                prenorm_mean=0.0,
                prenorm_rms=1.0,
                prenorm_rms_max=1.2,
            )
            if mode == "renorm":
                r_clip = (0.5 if step == 10 else 0.2) + 0.1 * seed
                row.update(r_clip_frac=r_clip, d_clip_frac=r_clip / 2)
        row.update(
            param_norm=10.0 + step / 10,
            val_acc_eval=val_acc,
            val_loss=2.0 - val_acc,
            val_acc_train_mode=val_acc + gap,
            gap_train_minus_eval=gap,
            kl_train_eval=kl,
            train_subset_acc_eval=val_acc,
            samples_seen=step * 4,
        )
        if precise is not None:
            row.update(
                val_acc_precise=val_acc + precise,
                val_loss_precise=2.0 - val_acc - precise,
                precise_seconds=0.01 * (1 + step / 10) + 0.001 * seed,
            )
        rows.append(row)
    if status == "diverged":
        rows[-1].update(loss=float("inf"), param_norm=5000.0)
    return rows


def write_run(root: Path, spec, sweep: str = "study") -> Path:
    mode, batch_size, seed, kind, status, acc, gap, kl, extra = spec
    ghost = f"-ghost{extra['virtual_batch_size']}" if "virtual_batch_size" in extra else ""
    ghost += f"-lr{extra['lr']}" if "lr" in extra else ""
    ghost += "-precise" if "precise" in extra or "precise_bn" in extra else ""
    ghost += f"-{extra['model']}" if "model" in extra else ""
    run_id = f"{mode}{ghost}-bs{batch_size}-s{seed}-{kind}-{extra.get('sampler', 'iid')}"
    rows = metric_rows(mode, seed, status, acc, gap, kl, extra.get("precise"))
    node = config(mode, batch_size, seed, kind, extra)
    if status == "incomplete":
        summary = None
    else:
        last = rows[-1]
        statistics = extra.get("virtual_batch_size", batch_size)
        summary = {
            "norm": mode,
            # what the trainer writes where the mode is built (renorm: its clip fractions'
            # declaration), the label and statistics batch size as worked out here
            **registry.choose({"mode": mode}).record(batch_size),
            "norm_label": label(mode, extra),
            "statistics_batch_size": statistics,
            # an MLP: one value per example behind each channel's statistic, at every layer
            "values_per_channel": {f"blocks.{i}.norm": statistics for i in range(3)},
            "values_per_channel_min": statistics,
            "batch_size": batch_size,
            "seed": seed,
            "status": status,
            "steps": last["step"],
            "total_steps": 20,
            "eval_split": "test",
            "final": {
                k: ("inf" if v == float("inf") else v) for k, v in last.items() if k != "step"
            },
            "best": {
                "best_val_acc_eval": max(r["val_acc_eval"] for r in rows),
                "best_val_loss": min(r["val_loss"] for r in rows),
            },
            "backend_errors": {},
        }
        if status == "diverged":
            summary.update(
                divergence_step=14,
                divergence_signal="loss_explosion",
                divergence_value=float("inf"),
            )
        if status == "failed":
            summary["error"] = "RuntimeError: out of memory"
        if extra.get("param_growth"):
            summary["param_norm_growth_step"] = 12
    return write_record(root, sweep, run_id, node, summary, rows)


def written_runs(tmp_path_factory, name: str, specs) -> Path:
    root = tmp_path_factory.mktemp(name)
    for spec in specs:
        write_run(root, spec)
    return root


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    return written_runs(tmp_path_factory, "results", RUNS)


@pytest.fixture(scope="module")
def non_iid_results(tmp_path_factory) -> Path:
    return written_runs(tmp_path_factory, "results_non_iid", NON_IID_RUNS)


@pytest.fixture(scope="module")
def precise_results(tmp_path_factory) -> Path:
    return written_runs(tmp_path_factory, "results_precise", PRECISE_RUNS)


@pytest.fixture(scope="module")
def ghost_results(tmp_path_factory) -> Path:
    return written_runs(tmp_path_factory, "results_ghost", GHOST_RUNS)


@pytest.fixture(scope="module")
def runs(results) -> pd.DataFrame:
    with pytest.warns(UserWarning, match="1 incomplete"):
        return load_runs(results)


def row(frame: pd.DataFrame, **where) -> pd.Series:
    match = frame
    for key, value in where.items():
        match = match.loc[match[key] == value]
    assert len(match) == 1, (where, match)
    return match.iloc[0]


def t95(values):
    """(mean, low, high) of the 95 % t interval, by hand."""
    centre = mean(values)
    half = T975[len(values) - 1] * stdev(values) / math.sqrt(len(values))
    return centre, centre - half, centre + half


def interval(point: pd.Series):
    return (point["mean"], point["low"], point["high"])


def close(values):
    return pytest.approx(values, abs=1e-4)


def cli(capsys, *args: str) -> tuple[int, str]:
    code = plots.main([str(a) for a in args])
    return code, capsys.readouterr().out


# ----------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def drawn(results, tmp_path_factory) -> tuple[Path, int, str]:
    """Every figure and table of ``results``, in both formats, drawn once for the module (PDFs
    are most of a draw's time): the output folder, the exit code and what was printed."""
    out = tmp_path_factory.mktemp("drawn")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = plots.main([str(results / "runs" / "study"), "--out", str(out)])
    return out, code, printed.getvalue()


@pytest.mark.xdist_group("drawn")  # its figures, drawn once
def test_cli_writes_every_figure_and_table(drawn):
    out, code, printed = drawn
    assert code == 0
    expected = {f"{name}.{ext}" for name in FIGURES for ext in ("png", "pdf")}
    expected |= {f"{table}.{ext}" for table in ("summary", "divergence") for ext in TABLES}
    assert {p.name for p in out.iterdir()} == expected
    for name in expected:
        assert str(out / name) in printed
        assert (out / name).stat().st_size > 0
    assert "skipping 1 incomplete run (killed before finishing): study/renorm-bs4-s2" in printed
    assert "skipping 1 failed run (stopped by an error" in printed
    assert (
        "skipping accuracy_vs_step_non_iid figure: needs non-i.i.d. runs "
        "(config.data.sampler=non_iid)" in printed
    )
    assert (
        "skipping precise_statistics figure: needs runs that recomputed precise statistics "
        "(val_acc_precise logged)" in printed
    )
    assert "skipping blowup_mechanism figure: needs runs with a trace.csv" in printed
    assert (out / "accuracy_vs_step.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "accuracy_vs_step.pdf").read_bytes()[:5] == b"%PDF-"


def test_non_iid_figure_is_drawn_when_such_runs_exist(results, non_iid_results, tmp_path, capsys):
    out = tmp_path / "figures"
    code, printed = cli(capsys, results, non_iid_results, "--out", out, "--formats", "png")
    assert code == 0
    assert (out / "accuracy_vs_step_non_iid.png").exists()
    assert "non_iid figure" not in printed
    with pytest.warns(UserWarning, match="1 incomplete"):
        runs = load_runs(results, non_iid_results)
    frame = plots.accuracy_vs_step_frame(runs, sampler="non_iid")
    assert set(frame["mode"]) == {"batch"}
    last = row(frame, step=20)
    assert interval(last) == close(t95([0.30, 0.36]))
    assert last["n"] == 2
    # and the i.i.d. figure leaves them out
    iid = plots.accuracy_vs_step_frame(runs)
    assert row(iid, mode="batch", batch_size=4, step=20)["mean"] == pytest.approx(0.63)


def test_figures_that_the_results_cannot_support_are_skipped_with_a_reason(tmp_path, capsys):
    for spec in RUNS[:2]:
        write_run(tmp_path / "results", spec)
    out = tmp_path / "figures"
    (out / "mode_internals.png").parent.mkdir(parents=True)
    (out / "mode_internals.png").write_bytes(b"stale")
    code, printed = cli(capsys, tmp_path / "results", "--out", out)
    assert code == 0
    assert "skipping divergence figure: needs runs that vary lr, depth" in printed
    assert "skipping divergence_traces figure: needs runs that diverged" in printed
    assert "skipping decay_schedules figure: needs runs with two or more momentum" in printed
    assert (
        "skipping mode_internals figure: needs runs that log a quantity their mode declares with "
        "a bound (norm_quantities in summary.json); none in these results (removed its stale "
        "files)" in printed
    )
    assert "skipping precise_statistics figure: needs runs that recomputed precise" in printed
    assert (
        "skipping ghost_batch figure: needs runs with ghost batches "
        "(statistics_batch_size < batch_size)" in printed
    )
    assert "skipping divergence table: no run diverged or had parameter-norm growth" in printed
    assert not (out / "mode_internals.png").exists()
    assert (out / "accuracy_vs_batch_size.png").exists()


def test_a_run_recorded_in_two_sweeps_counts_once(tmp_path, capsys):
    for sweep in ("first", "again"):
        for spec in RUNS[:2]:
            write_run(tmp_path / "results", spec, sweep)
    code, printed = cli(capsys, tmp_path / "results", "--out", tmp_path / "figures")
    assert code == 0
    assert "skipping 2 repeated run(s)" in printed and "first/batch-bs4-s0" in printed
    frame = plots.accuracy_vs_batch_size_frame(load_runs(tmp_path / "results"))
    assert (frame["n"].tolist(), frame["mean"].tolist()) == ([2], [pytest.approx(0.61)])


def test_precise_and_ghost_figures_are_drawn_when_such_runs_exist(
    precise_results, ghost_results, tmp_path, capsys
):
    out = tmp_path / "figures"
    code, printed = cli(capsys, precise_results, ghost_results, "--out", out, "--formats", "png")
    assert code == 0
    for name in ("precise_statistics", "ghost_batch"):
        assert f"{name} figure" not in printed
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "held-out acc., precise stats (%)" in (out / "summary.md").read_text()


def test_cli_writes_only_the_formats_asked_for(results, tmp_path, capsys):
    out = tmp_path / "figures"
    code, _ = cli(capsys, results / "runs" / "study", "--out", out, "--formats", "png")
    assert code == 0
    written = {p.suffix for p in out.iterdir()}
    assert ".png" in written and ".pdf" not in written
    with pytest.raises(SystemExit):
        plots.main([str(results / "runs" / "study"), "--formats", "png,jpeg"])
    assert "allowed: a comma-separated list of png, pdf, svg" in capsys.readouterr().err


def test_cli_reports_missing_or_empty_results(tmp_path, capsys):
    assert plots.main([str(tmp_path / "nowhere")]) == 2
    (tmp_path / "empty").mkdir()
    assert plots.main([str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 1


@pytest.mark.xdist_group("drawn")  # its figures, drawn once
def test_same_results_give_identical_files(results, drawn, tmp_path, capsys):
    first, second = drawn[0], tmp_path / "again"
    cli(capsys, results / "runs" / "study", "--out", second)
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir())
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    png = (first / "accuracy_vs_batch_size.png").read_bytes()
    assert b"Software" not in png and b"matplotlib version" not in png
    assert b"CreationDate" not in (first / "accuracy_vs_batch_size.pdf").read_bytes()


def test_bootstrap_intervals_are_chosen_on_the_command_line(results, tmp_path, capsys):
    code, _ = cli(capsys, results, "--out", tmp_path, "--interval", "bootstrap", "--formats", "png")
    assert code == 0
    markdown = (tmp_path / "summary.md").read_text()
    assert "95 % percentile-bootstrap interval" in markdown
    # two seeds 0.81 and 0.83: resampled means are 0.81, 0.82, 0.83 with chances 1/4, 1/2,
    # 1/4, so the 2.5 % and 97.5 % quantiles are the two values themselves
    assert "| renorm | 32 | constant | 82.0 [81.0, 83.0] |" in markdown


# ----------------------------------------------------------------------------- frames


def test_accuracy_vs_batch_size_frame(runs):
    frame = plots.accuracy_vs_batch_size_frame(runs)
    assert list(frame.columns) == [
        "mode",
        "batch_size",
        "setting",
        "mean",
        "low",
        "high",
        "n",
        "n_diverged",
        "n_used",
    ]
    batch4 = row(frame, mode="batch", batch_size=4)
    assert interval(batch4) == close(t95([0.60, 0.62, 0.67]))
    assert interval(batch4) == close((0.63, 0.5404, 0.7196))  # 0.63 ± 4.303 · 0.03606 / √3
    assert (batch4["n"], batch4["n_diverged"], batch4["setting"]) == (3, 0, "momentum=constant")
    # the failed seed 3 is not counted
    batch32 = row(frame, mode="batch", batch_size=32)
    assert (batch32["mean"], batch32["n"]) == (pytest.approx(0.82), 2)
    ghost = row(frame, mode="batch (ghost)")
    assert (ghost["mean"], ghost["n"]) == (pytest.approx(0.78), 1)
    assert pd.isna(ghost["low"]) and pd.isna(ghost["high"])  # no interval from one seed
    # renorm bs 4: the incomplete seed 2 is left out
    assert row(frame, mode="renorm", batch_size=4)["mean"] == pytest.approx(0.65)
    # diverged seed 2 counted but not averaged
    ema = row(frame, mode="moving_average", setting="momentum=constant")
    assert interval(ema) == close(t95([0.40, 0.46]))
    assert (ema["n"], ema["n_diverged"], ema["n_used"]) == (3, 1, 2)
    cosine = row(frame, mode="moving_average", setting="momentum=cosine")
    assert (cosine["mean"], cosine["n_diverged"]) == (pytest.approx(0.52), 0)
    assert list(frame["mode"]) == [
        "batch",
        "batch",
        "batch (ghost)",
        "moving_average",
        "moving_average",
        "renorm",
        "renorm",
    ]


def test_train_eval_gap_frame(runs):
    frame = plots.train_eval_gap_frame(runs)
    assert set(frame["metric"]) == {"gap_train_minus_eval", "kl_train_eval"}
    gap = row(frame, metric="gap_train_minus_eval", mode="batch", batch_size=4)
    assert interval(gap) == close(t95([0.10, 0.12, 0.08]))
    kl = row(frame, metric="kl_train_eval", mode="renorm", batch_size=32)
    assert interval(kl) == close(t95([0.03, 0.05]))


def test_accuracy_vs_step_frame_averages_non_diverged_seeds_per_step(runs):
    frame = plots.accuracy_vs_step_frame(runs)
    columns = ["mode", "setting", "batch_size", "step", "mean", "low", "high", "n"]
    assert list(frame.columns) == columns
    at10 = row(frame, mode="batch", batch_size=4, step=10)
    assert interval(at10) == close(t95([0.50, 0.52, 0.57]))
    at0 = row(frame, mode="renorm", batch_size=32, step=0)
    assert interval(at0) == close((0.1, 0.1, 0.1))  # two equal seeds: a zero-width interval
    assert at0["n"] == 2
    ema = frame.loc[(frame["mode"] == "moving_average") & (frame["setting"] == "momentum=constant")]
    assert list(ema["step"]) == [0, 10, 20]
    assert list(ema["n"]) == [2, 2, 2]  # the diverged seed is drawn on its own
    assert row(ema, step=10)["mean"] == pytest.approx(0.33)


def test_decay_schedules_frame(runs):
    frame = plots.decay_schedules_frame(runs)
    constant = row(
        frame, momentum_kind="constant", mode="moving_average", metric="mean_shift", step=20
    )
    assert constant["mean"] == pytest.approx(0.25)  # seeds 0 and 1: 0.2 and 0.3
    assert constant["n"] == 2
    cosine = row(frame, momentum_kind="cosine", mode="moving_average", metric="std_ratio", step=10)
    assert interval(cosine) == close(t95([1.0, 1.05]))
    accuracy = row(
        frame, momentum_kind="cosine", mode="moving_average", metric="val_acc_eval", step=20
    )
    assert accuracy["mean"] == pytest.approx(0.52)


def test_mode_internals_frame_holds_the_runs_that_log_clipping(runs):
    frame = plots.mode_internals_frame(runs)
    assert set(frame["mode"]) == {"renorm"}  # the only runs whose mode declares quantities
    r10 = row(frame, batch_size=4, metric="r_clip_frac", step=10)
    assert interval(r10) == close(t95([0.5, 0.6]))
    assert r10["n"] == 2
    d20 = row(frame, batch_size=32, metric="d_clip_frac", step=20)
    assert d20["mean"] == pytest.approx((0.1 + 0.15) / 2)
    rmax = frame.loc[(frame["batch_size"] == 4) & (frame["metric"] == "rmax")]
    assert list(rmax["mean"]) == [1.0, 2.0, 3.0]
    assert row(frame, batch_size=4, metric="dmax", step=10)["mean"] == pytest.approx(2.5)


# a mode no registry knows whose records declare a quantity of its own, drawn against a bound
WOBBLE = {
    "name": "wobble_frac",
    "label": "wobbled (% of channels)",
    "percent": True,
    "bound": "wmax",
}


def write_wobble_run(root: Path, seed: int) -> Path:
    """wobble_frac ``(0.2 + 0.2 seed) · step / 10``, its bound wmax ``1 + step / 10``."""
    rows = [
        {
            "step": step,
            "wobble_frac": (0.2 + 0.2 * seed) * step / 10,
            "wmax": 1 + step / 10,
            "val_acc_eval": 0.5,
        }
        for step in STEPS
    ]
    node = config("renorm", 4, seed, "constant", {})
    node["norm"] = {"mode": "wobble", "_target_": "outside.Wobble", "eps": 1e-5}
    summary = {
        "norm": "wobble",
        "norm_label": "wobble",
        "norm_quantities": [WOBBLE],
        "batch_size": 4,
        "seed": seed,
        "status": "completed",
        "final": {k: v for k, v in rows[-1].items() if k != "step"},
    }
    return write_record(root, "study", f"wobble-bs4-s{seed}", node, summary, rows)


def test_the_internals_figure_draws_what_the_records_declare(tmp_path):
    """Beside renorm's two panels, a panel for the quantity the wobble records declare, drawn
    against the bound they name, with the wobble runs alone in it."""
    root = tmp_path / "results"
    for spec in RUNS:
        if spec[0] == "renorm" and spec[4] == "completed":
            write_run(root, spec)
    for seed in (0, 1):
        write_wobble_run(root, seed)
    runs = load_runs(root)
    frame = plots.mode_internals_frame(runs)
    metrics = frame.groupby("mode")["metric"].agg(set).to_dict()
    assert metrics == {
        "renorm": {"r_clip_frac", "d_clip_frac", "rmax", "dmax"},
        "wobble": {"wobble_frac", "wmax"},
    }
    assert row(frame, mode="wobble", metric="wobble_frac", step=20)["mean"] == pytest.approx(0.6)
    assert row(frame, mode="wobble", metric="wmax", step=10)["mean"] == pytest.approx(2.0)

    figure = plots.plot_mode_internals(runs)
    assert [ax.get_ylabel() for ax in figure.axes] == [
        "r clipped (% of channels)",
        "d clipped (% of channels)",
        "wobbled (% of channels)",
        "rmax (schedule)",
        "dmax (schedule)",
        "wmax (schedule)",
    ]
    wobble, wmax = figure.axes[2], figure.axes[5]
    wobble_color = plots.palette(["wobble"])["wobble"].color
    assert [line.get_color() for line in wobble.lines] == [wobble_color], "no renorm line"
    assert list(wobble.lines[0].get_ydata()) == pytest.approx([0.0, 30.0, 60.0])  # in %
    assert [list(line.get_ydata()) for line in wmax.lines] == [[1.0, 2.0, 3.0]]
    legend = [text.get_text() for text in figure.legends[0].get_texts()]
    assert "rmax / dmax / wmax (right axis)" in legend


def test_a_record_without_declared_quantities_has_no_internals(tmp_path, capsys):
    """renorm records written before norm_quantities: the figure is skipped, nothing breaks."""
    root = tmp_path / "results"
    for spec in RUNS[7:9]:
        run_dir = write_run(root, spec)
        summary = json.loads((run_dir / "summary.json").read_text())
        del summary["norm_quantities"]
        (run_dir / "summary.json").write_text(json.dumps(summary))
    runs = load_runs(root)
    assert plots.mode_internals_frame(runs).empty
    with pytest.raises(plots.Skip, match="norm_quantities"):
        plots.plot_mode_internals(runs)


def test_divergence_frames_carry_wilson_intervals(runs):
    frame = plots.divergence_frame(runs)
    assert set(frame["key"]) == {"config.momentum.kind"}  # lr and depth do not vary
    ema = row(frame, mode="moving_average", value="constant")
    assert (ema["n"], ema["n_diverged"], ema["fraction"]) == (3, 1, pytest.approx(1 / 3))
    # Wilson, z = 1.95996: (1/3 + z²/6) / (1 + z²/3) ± z / (1 + z²/3) · √(2/27 + z²/36)
    assert (ema["low"], ema["high"]) == close((0.0615, 0.7923))
    batch = row(frame, mode="batch", value="constant")
    assert (batch["n"], batch["n_diverged"]) == (5, 0)
    assert (batch["low"], batch["high"]) == close((0.0, 0.4345))  # z² / (5 + z²)
    traces = plots.diverged_traces_frame(runs)
    assert list(traces["step"]) == [0, 10, 15]
    assert set(traces["divergence_step"]) == {14}
    assert traces["loss"].iloc[-1] == float("inf")


def test_divergence_table_counts_param_norm_growth_apart(tmp_path):
    growth = ("batch", 4, 0, "constant", "completed", 0.6, 0.1, 0.2, {"param_growth": True})
    for spec in (growth, RUNS[1], RUNS[12], RUNS[13], RUNS[14]):
        write_run(tmp_path, spec)
    table = plots.divergence_table_frame(load_runs(tmp_path))
    batch = row(table, mode="batch")
    assert (batch["n"], batch["n_diverged"], batch["n_param_growth"]) == (2, 0, 1)
    ema = row(table, mode="moving_average")
    assert (ema["n"], ema["n_diverged"], ema["n_param_growth"]) == (3, 1, 0)
    assert (ema["first_divergence_step"], ema["signals"]) == (14, "loss_explosion")
    markdown = plots.write_divergence(table, tmp_path / "out")[0].read_text()
    assert "| batch | 4 | 0/2 (0–66 %) | 1/2 |" in markdown  # z² / (2 + z²) = 0.658
    assert "| moving_average | 4 | 1/3 (6–79 %) | 0/3 | 14 | loss_explosion |" in markdown
    assert "95 % Wilson interval" in markdown


def test_summary_table(runs, tmp_path):
    table = plots.summary_table(runs)
    ema = row(table, mode="moving_average", momentum="constant")
    assert (ema["n"], ema["n_diverged"], ema["n_param_growth"]) == (3, 1, 0)
    assert ema["diverged_frac"] == pytest.approx(1 / 3)
    assert (ema["diverged_low"], ema["diverged_high"]) == close((0.0615, 0.7923))
    assert ema["val_acc_eval_mean"] == pytest.approx(0.43)
    assert ema["best_val_acc_eval_mean"] == pytest.approx(0.43)
    batch = row(table, mode="batch", batch_size=4)
    assert batch["val_acc_train_mode_mean"] == pytest.approx(mean([0.70, 0.74, 0.75]))
    low, high = t95([0.2, 0.3, 0.4])[1:]
    assert (batch["kl_train_eval_low"], batch["kl_train_eval_high"]) == close((low, high))
    paths = plots.write_summary(table, tmp_path)
    markdown = paths[0].read_text()
    assert "mean [95 % t interval] over the seeds that did not diverge" in markdown
    assert "| batch | 4 | constant |" in markdown
    assert "| 63.0 [54.0, 72.0] |" in markdown  # 100 × (0.63 ± 0.0896)
    assert "1/3 (6–79 %)" in markdown
    latex = paths[1].read_text()
    assert r"\begin{tabular}" in latex and "63.0 [54.0, 72.0]" in latex
    assert r"moving\_average" in latex and r"1/3 (6--79 \%)" in latex
    csv_table = pd.read_csv(paths[2])
    assert len(csv_table) == len(table)


def test_precise_statistics_frame(precise_results):
    frame = plots.precise_statistics_frame(load_runs(precise_results))
    assert list(frame.columns) == [
        "metric",
        "mode",
        "batch_size",
        "setting",
        "mean",
        "low",
        "high",
        "n",
        "n_diverged",
        "n_used",
    ]
    # the none run asked but logged nothing, the batch-64 run did not ask: both left out
    pairs = set(frame[["mode", "batch_size"]].itertuples(index=False, name=None))
    assert pairs == {("batch", 4), ("batch", 32), ("renorm", 4)}
    assert set(frame["setting"]) == {""}
    ema = row(frame, metric="val_acc_eval", mode="batch", batch_size=4)
    assert interval(ema) == close(t95([0.60, 0.62]))
    assert (ema["n"], ema["n_diverged"], ema["n_used"]) == (3, 1, 2)
    precise = row(frame, metric="val_acc_precise", mode="batch", batch_size=4)
    assert interval(precise) == close(t95([0.65, 0.64]))
    # paired: the interval of the per-seed differences 0.05 and 0.02
    gain = row(frame, metric="precise_minus_eval", mode="batch", batch_size=4)
    assert interval(gain) == close(t95([0.05, 0.02]))
    assert (gain["n"], gain["n_diverged"]) == (3, 1)
    big = row(frame, metric="precise_minus_eval", mode="batch", batch_size=32)
    assert interval(big) == close(t95([0.01, -0.01]))
    assert row(frame, metric="val_acc_precise", mode="batch", batch_size=32)["mean"] == (
        pytest.approx(0.82)
    )
    renorm = row(frame, metric="val_acc_precise", mode="renorm", batch_size=4)
    assert (renorm["mean"], renorm["n"]) == (pytest.approx(0.68), 2)
    assert row(frame, metric="precise_minus_eval", mode="renorm")["mean"] == pytest.approx(0.03)


def test_ghost_batch_frame(ghost_results, runs):
    frame = plots.ghost_batch_frame(load_runs(ghost_results))
    eval_mode = frame.loc[frame["metric"] == "val_acc_eval"]
    # the lr=0.05 run is its own setting; batch size 16 (no ghost run) and renorm are left out
    columns = ["setting", "batch_size", "statistics_batch_size", "mode"]
    assert list(eval_mode[columns].itertuples(index=False, name=None)) == [
        ("lr=0.05", 32, 8, "batch (ghost)"),
        ("lr=0.1", 32, 4, "batch (ghost)"),
        ("lr=0.1", 32, 8, "batch (ghost)"),
        ("lr=0.1", 32, 32, "batch"),
        ("lr=0.1", 64, 8, "batch (ghost)"),
    ]
    assert set(eval_mode["norm_mode"]) == {"batch"}, "ghost and whole-batch runs: one mode"
    v4 = row(eval_mode, setting="lr=0.1", batch_size=32, statistics_batch_size=4)
    assert interval(v4) == close(t95([0.70, 0.74]))
    assert v4["n"] == 2
    v8 = row(eval_mode, setting="lr=0.1", batch_size=32, statistics_batch_size=8)
    assert v8["mean"] == pytest.approx((0.76 + 0.79) / 2)
    assert (v8["n"], v8["n_diverged"], v8["n_used"]) == (3, 1, 2)
    plain = row(eval_mode, batch_size=32, statistics_batch_size=32)
    assert interval(plain) == close(t95([0.80, 0.84]))
    assert row(eval_mode, batch_size=64)["mean"] == pytest.approx(0.735)
    single = row(eval_mode, setting="lr=0.05")
    assert (single["mean"], single["n"]) == (pytest.approx(0.60), 1) and pd.isna(single["low"])
    train_mode = frame.loc[frame["metric"] == "val_acc_train_mode"]
    t4 = row(train_mode, setting="lr=0.1", batch_size=32, statistics_batch_size=4)
    assert interval(t4) == close(t95([0.80, 0.82]))
    assert row(train_mode, batch_size=32, statistics_batch_size=32)["mean"] == pytest.approx(0.85)
    assert row(train_mode, setting="lr=0.1", batch_size=32, statistics_batch_size=8)["mean"] == (
        pytest.approx(0.82)
    )
    assert interval(row(train_mode, batch_size=64)) == close(t95([0.80, 0.82]))
    # the main results: one ghost run (statistics over 8) and plain BN at 32 (failed seed out)
    main = plots.ghost_batch_frame(runs)
    main = main.loc[main["metric"] == "val_acc_eval"]
    assert list(main["statistics_batch_size"]) == [8, 32] and set(main["setting"]) == {""}
    assert list(main["mean"]) == [pytest.approx(0.78), pytest.approx(0.82)]
    assert list(main["n"]) == [1, 2]


def test_ghost_batch_figure_draws_a_line_per_mode(ghost_results):
    """A mode's ghost and whole-batch points on one line; another mode (GroupNorm per device in
    a data-parallel study) on its own, never joined to the first."""
    from normlab.plots import draw
    from normlab.plots.ghost import _draw_panel
    from normlab.plots.style import new_figure

    frame = plots.ghost_batch_frame(load_runs(ghost_results))
    part = frame.loc[(frame["setting"] == "lr=0.1") & (frame["batch_size"] == 32)]
    shifted = {column: part[column] - 0.3 for column in ("mean", "low", "high")}
    group = part.assign(mode="group", norm_mode="group", **shifted)
    part = pd.concat([part, group], ignore_index=True)
    _, axes = new_figure(1)
    _draw_panel(axes[0, 0], part, draw.palette_of(part))
    grey = [line for line in axes[0, 0].get_lines() if line.get_color() == "0.5"]
    solid = [line for line in grey if line.get_linestyle() == "-"]
    assert [list(line.get_xdata()) for line in solid] == [[4.0, 8.0, 32.0]] * 2
    ends = sorted(line.get_ydata()[-1] for line in solid)
    assert ends == close([52.0, 82.0]), "each ends at its mode's whole batch (0.82, or 0.3 less)"


def test_summary_table_with_precise_statistics(precise_results, runs, tmp_path):
    assert "val_acc_precise_mean" not in plots.summary_table(runs)
    table = plots.summary_table(load_runs(precise_results))
    batch = row(table, mode="batch", batch_size=4)
    precise = (batch["val_acc_precise_mean"], batch["val_acc_precise_low"])
    assert precise == close(t95([0.65, 0.64])[:2])
    # per run, the mean over its evaluations (steps 0, 10, 20), not the last one
    seconds = ("precise_seconds_mean", "precise_seconds_low", "precise_seconds_high")
    assert tuple(batch[c] for c in seconds) == close(t95([0.020, 0.021]))
    assert row(table, mode="renorm")["precise_seconds_mean"] == pytest.approx(0.0205)
    for mode, size in (("none", 4), ("batch", 64)):
        assert pd.isna(row(table, mode=mode, batch_size=size)["val_acc_precise_mean"])
    markdown = plots.write_summary(table, tmp_path)[0].read_text()
    assert "held-out acc., precise stats (%) | precise-BN time per eval. (s) |" in markdown
    assert "| 64.5 [58.1, 70.9] |" in markdown  # 0.645 ± 12.706 · 0.00707 / √2


# ----------------------------------------------------------------------------- values per channel


def channel_run(root, model, batch_size, seed, accuracy, per_layer, with_min=True):
    """A completed run of ``model`` whose record lists the values behind each layer's
    per-channel statistics."""
    spec = (
        "batch",
        batch_size,
        seed,
        "constant",
        "completed",
        accuracy,
        0.0,
        0.0,
        {"model": model},
    )
    run_dir = write_run(root, spec)
    summary = json_load(run_dir / "summary.json")
    summary["values_per_channel"] = per_layer
    summary.pop("values_per_channel_min")
    if with_min:
        summary["values_per_channel_min"] = min(per_layer.values())
    json_dump(run_dir / "summary.json", summary)


def yaml_text(node):
    return yaml.safe_dump(node, sort_keys=False)


def json_load(path):
    return json.loads(path.read_text())


def json_dump(path, value):
    path.write_text(json.dumps(value))


def test_values_per_channel_puts_mlp_and_conv_runs_on_one_axis(tmp_path, capsys):
    # MLP: each channel's statistic over a batch of B comes from B values at every layer.
    # cnn1d on MNIST-1D (length 40, two stride-2 convolutions): B × 40, B × 20, B × 10 values.
    for seed, (mlp8, mlp32, conv8, conv32) in enumerate(
        ((0.40, 0.60, 0.50, 0.62), (0.44, 0.62, 0.54, 0.66))
    ):
        channel_run(tmp_path, "mlp", 8, seed, mlp8, {f"blocks.{i}.norm": 8 for i in range(3)})
        channel_run(tmp_path, "mlp", 32, seed, mlp32, {f"blocks.{i}.norm": 32 for i in range(3)})
        conv = {"conv.0.norm": 8 * 40, "conv.1.norm": 8 * 20, "conv.2.norm": 8 * 10}
        channel_run(tmp_path, "cnn1d", 8, seed, conv8, conv, with_min=seed == 0)
        conv = {"conv.0.norm": 32 * 40, "conv.1.norm": 32 * 20, "conv.2.norm": 32 * 10}
        channel_run(tmp_path, "cnn1d", 32, seed, conv32, conv)
    frame = plots.values_per_channel_frame(load_runs(tmp_path))
    points = list(frame[["architecture", "values_per_channel"]].itertuples(index=False, name=None))
    assert points == [
        ("cnn1d on mnist1d", 80),  # 8 × 10, the fewest: the loader takes the min when absent
        ("cnn1d on mnist1d", 320),  # 32 × 10
        ("mlp on mnist1d", 8),
        ("mlp on mnist1d", 32),
    ]
    assert interval(row(frame, architecture="cnn1d on mnist1d", values_per_channel=80)) == close(
        t95([0.50, 0.54])
    )
    assert row(frame, architecture="mlp on mnist1d", values_per_channel=32)["n"] == 2
    code, _ = cli(capsys, tmp_path, "--out", tmp_path / "figures")
    assert code == 0 and (tmp_path / "figures" / "accuracy_vs_values_per_channel.png").exists()


# ----------------------------------------------------------------------------- blow-up traces


def traced_run(root, mode, lr, seed, diverge_at=None, steps=100, span=5):
    """A run that traced its first and last ``span`` steps: bias norm ``1 + step / 10`` (a
    blow-up's grows ten times faster), loss inf at the divergence step."""
    status = "diverged" if diverge_at else "completed"
    spec = (mode, 32, seed, "constant", status, 0.5, 0.0, 0.0, {"lr": lr})
    run_dir = write_run(root, spec, sweep="blowup")
    last = diverge_at or steps
    trace = []
    for step in [*range(span), *range(last - span + 1, last + 1)]:
        growth = 1.0 if diverge_at is None else 10.0
        trace.append(
            {
                "step": step,
                "loss": float("inf") if step == diverge_at else 2.0,
                "param_norm": 10.0 + step,
                "prenorm_bias_norm": 1.0 + growth * step / 10,
                "prenorm_mean_rms": 0.1 + growth * step / 100,
            }
        )
    pd.DataFrame(trace).to_csv(run_dir / "trace.csv", index=False)
    if diverge_at:
        summary = json_load(run_dir / "summary.json")
        summary["divergence_step"] = diverge_at
        json_dump(run_dir / "summary.json", summary)
    return run_dir


def test_blowup_mechanism_draws_blow_ups_beside_runs_of_their_setting(tmp_path, capsys):
    blown = [traced_run(tmp_path, "moving_average", 0.5, s, diverge_at=40) for s in (0, 1)]
    calm = traced_run(tmp_path, "batch", 0.5, 0)
    traced_run(tmp_path, "moving_average", 0.01, 0)  # nothing blew up at lr 0.01: left out
    rows = plots.traced_runs(load_runs(tmp_path))
    assert set(rows["setting"]) == {"lr=0.5"}
    assert set(rows["run_dir"]) == {str(p) for p in (*blown, calm)}
    first = rows.loc[rows["run_dir"] == str(blown[0])]
    assert list(first["step"]) == [0, 1, 2, 3, 4, 36, 37, 38, 39, 40]
    assert first["prenorm_bias_norm"].iloc[-1] == pytest.approx(41.0)
    assert set(first["divergence_step"]) == {40}
    code, printed = cli(capsys, tmp_path, "--out", tmp_path / "figures")
    assert code == 0 and "blowup_mechanism figure" not in printed
    assert (tmp_path / "figures" / "blowup_mechanism.png").exists()


# ----------------------------------------------------------------------------- records, styles


def test_old_records_get_their_label_and_statistics_from_the_migration(tmp_path):
    """Records written before ``norm_label``: every option of every mode in config.yaml."""
    every_option = {
        "mode": "batch",
        "eps": 1e-5,
        "update": "before",
        "grad_through_batch": False,
        "groups": 8,
        "virtual_batch_size": 8,
        "alpha_fwd": 0.999,
        "alpha_bkw": 0.99,
    }
    for mode, virtual, gtb in (("batch", 8, False), ("moving_average", None, True)):
        spec = (mode, 32, 0, "constant", "completed", 0.5, 0.0, 0.0, {})
        run_dir = write_run(tmp_path, spec)
        node = config(*spec[:4], {})
        node["norm"] = {**every_option, "mode": mode, "virtual_batch_size": virtual,
                        "grad_through_batch": gtb}  # fmt: skip
        (run_dir / "config.yaml").write_text(yaml_text(node))
        summary = json_load(run_dir / "summary.json")
        for key in ("norm_label", "statistics_batch_size"):
            summary.pop(key)
        json_dump(run_dir / "summary.json", summary)
        migration_script().complete(run_dir, dry_run=False)
    used = plots.prepare_runs(load_runs(tmp_path)).set_index("mode")
    assert used.loc["batch (ghost)", "statistics_batch_size"] == 8
    assert used.loc["moving_average (grad through batch)", "statistics_batch_size"] == 32


def test_palette_is_the_built_in_styles_and_outside_labels_get_their_own():
    styles = plots.palette(["batch", "batch (ghost)", "my_norm", "another"])
    assert (styles["batch"].color, styles["batch"].marker) == ("#0072B2", "o")
    assert styles["batch (ghost)"] == registry.get("batch").styles[1]
    builtin = {(s.color, s.marker) for s in labels.styles().values()}
    extra = {(styles[k].color, styles[k].marker) for k in ("my_norm", "another")}
    assert len(extra) == 2 and not extra & builtin


def test_the_figures_import_without_torch_or_hydra():
    code = (
        "import normlab.plots, normlab.plots.cli, sys; "
        "assert not {'torch', 'hydra', 'omegaconf'} & set(sys.modules), 'torch or hydra imported'"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(plots.__file__).parents[2])}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_plot_code_names_no_mode():
    """Figures derive their labels from the runs: no mode name or label as a string literal."""
    names = set(registry.names()) | set(labels.label_order())
    package = Path(plots.__file__).parent
    for path in package.glob("*.py"):
        tree = ast.parse(path.read_text())
        literals = {
            node.value
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
        }
        assert not literals & names, (path.name, literals & names)


# ----------------------------------------------------------------------------- one run


def test_run_figure_from_one_runs_metrics(results, tmp_path):
    run_dir = next((results / "runs" / "study").glob("renorm-bs4-s0-*"))
    metrics = pd.read_csv(run_dir / "metrics.csv")
    path = plots.run_figure(metrics, tmp_path / "run.png")
    assert path == tmp_path / "run.png" and path.read_bytes()[:4] == b"\x89PNG"
    without = metrics.drop(columns=["mean_shift", "val_acc_train_mode"])
    assert plots.run_figure(without, tmp_path / "bare").suffix == ".png"
    assert plots.run_figure(metrics, tmp_path / "run.pdf").read_bytes()[:5] == b"%PDF-"
    from normlab.plots import run_figure

    assert run_figure is plots.run_figure
