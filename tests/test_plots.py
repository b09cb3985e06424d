"""Figures and tables from a small results set written by hand in the trainer's record format.

Every expected number below is worked out by hand from the values in :data:`RUNS` and the
per-step formulas in :func:`metric_rows`, not by the aggregation code under test.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from statistics import mean, stdev

import pandas as pd
import pytest
import yaml

from normlab import plots
from normlab.results import load_runs

STEPS = (0, 10, 20)
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
    "train_eval_gap",
    "divergence",
    "divergence_traces",
    "decay_schedules",
    "renorm_internals",
    "ghost_batch",
)


def config(mode, batch_size, seed, kind, extra):
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
    return {
        "norm": {
            "mode": mode,
            "eps": 1e-5,
            "update": "before",
            "grad_through_batch": False,
            "groups": 8,
            "virtual_batch_size": extra.get("virtual_batch_size"),
            "alpha_fwd": 0.999,
            "alpha_bkw": 0.99,
        },
        "momentum": momentum,
        "renorm": {
            "rmax": {"kind": "piecewise", "knots": [[0.0, 1.0], [1.0, 3.0]]},
            "dmax": {"kind": "piecewise", "knots": [[0.0, 0.0], [1.0, 5.0]]},
        },
        "data": {
            "name": "mnist1d",
            "sampler": extra.get("sampler", "iid"),
            "classes_per_batch": 2,
            "drop_last": True,
        },
        "model": {"name": "mlp", "depth": 3, "width": 64, "bias_before_norm": False},
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
    run_id = f"{mode}{ghost}-bs{batch_size}-s{seed}-{kind}-{extra.get('sampler', 'iid')}"
    run_dir = root / "runs" / sweep / run_id
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(
        yaml.safe_dump(config(mode, batch_size, seed, kind, extra), sort_keys=False)
    )
    rows = metric_rows(mode, seed, status, acc, gap, kl, extra.get("precise"))
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with (run_dir / "metrics.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    if status == "incomplete":
        return run_dir
    last = rows[-1]
    finite = [r["val_acc_eval"] for r in rows]
    summary = {
        "run_id": run_id,
        "sweep": sweep,
        "run_dir": str(run_dir),
        "norm": mode,
        "batch_size": batch_size,
        "seed": seed,
        "status": status,
        "steps": last["step"],
        "total_steps": 20,
        "final": {k: ("inf" if v == float("inf") else v) for k, v in last.items() if k != "step"},
        "best": {
            "best_val_acc_eval": max(finite),
            "best_val_loss": min(r["val_loss"] for r in rows),
        },
        "backend_errors": {},
    }
    if status == "diverged":
        summary.update(
            divergence_step=14, divergence_signal="loss_explosion", divergence_value=float("inf")
        )
    if status == "failed":
        summary["error"] = "RuntimeError: out of memory"
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return run_dir


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


def cli(capsys, *args: str) -> tuple[int, str]:
    code = plots.main([str(a) for a in args])
    return code, capsys.readouterr().out


# ----------------------------------------------------------------------------- CLI


def test_cli_writes_every_figure_and_table(results, tmp_path, capsys):
    out = tmp_path / "figures"
    code, printed = cli(capsys, results / "runs" / "study", "--out", out)
    assert code == 0
    expected = {f"{name}.{ext}" for name in FIGURES for ext in ("png", "pdf")}
    expected |= {"summary.md", "summary.tex", "summary.csv"}
    assert {p.name for p in out.iterdir()} == expected
    for name in expected:
        assert str(out / name) in printed
        assert (out / name).stat().st_size > 0
    assert "skipping 1 incomplete run (killed before finishing): study/renorm-bs4-s2" in printed
    assert "skipping 1 failed run (stopped by an error" in printed
    assert "skipping accuracy_vs_step_non_iid figure: no non-i.i.d." in printed
    assert "skipping precise_statistics figure: no run logged val_acc_precise" in printed
    assert (out / "accuracy_vs_step.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "accuracy_vs_step.pdf").read_bytes()[:5] == b"%PDF-"


def test_non_iid_figure_is_drawn_when_such_runs_exist(results, non_iid_results, tmp_path, capsys):
    out = tmp_path / "figures"
    code, printed = cli(capsys, results, non_iid_results, "--out", out)
    assert code == 0
    assert (out / "accuracy_vs_step_non_iid.png").exists()
    assert (out / "accuracy_vs_step_non_iid.pdf").exists()
    assert "non_iid figure" not in printed
    with pytest.warns(UserWarning, match="1 incomplete"):
        runs = load_runs(results, non_iid_results)
    frame = plots.accuracy_vs_step_frame(runs, sampler="non_iid")
    assert set(frame["mode"]) == {"batch"}
    last = row(frame, step=20)
    assert last["mean"] == pytest.approx(0.33)
    assert last["std"] == pytest.approx(stdev([0.30, 0.36]))
    assert last["n"] == 2
    # and the i.i.d. figure leaves them out
    iid = plots.accuracy_vs_step_frame(runs)
    assert row(iid, mode="batch", batch_size=4, step=20)["mean"] == pytest.approx(0.63)


def test_figures_that_the_results_cannot_support_are_skipped_with_a_reason(tmp_path, capsys):
    for spec in RUNS[:2]:
        write_run(tmp_path / "results", spec)
    out = tmp_path / "figures"
    (out / "renorm_internals.png").parent.mkdir(parents=True)
    (out / "renorm_internals.png").write_bytes(b"stale")
    code, printed = cli(capsys, tmp_path / "results", "--out", out)
    assert code == 0
    assert "skipping divergence figure: no run varies lr, depth or momentum schedule" in printed
    assert "skipping divergence_traces figure: no run diverged" in printed
    assert "skipping decay_schedules figure: all runs use the same momentum schedule" in printed
    assert "skipping renorm_internals figure: no renorm run (removed its stale files)" in printed
    assert "skipping precise_statistics figure: no run logged val_acc_precise" in printed
    assert "skipping ghost_batch figure: no batch run sets norm.virtual_batch_size" in printed
    assert not (out / "renorm_internals.png").exists()
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
    code, printed = cli(capsys, precise_results, ghost_results, "--out", out)
    assert code == 0
    for name in ("precise_statistics", "ghost_batch"):
        assert f"{name} figure" not in printed
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (out / f"{name}.pdf").read_bytes()[:5] == b"%PDF-"
    assert "val. accuracy, precise stats (%)" in (out / "summary.md").read_text()


def test_cli_reports_missing_or_empty_results(tmp_path, capsys):
    assert plots.main([str(tmp_path / "nowhere")]) == 2
    (tmp_path / "empty").mkdir()
    assert plots.main([str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 1


def test_same_results_give_identical_files(results, tmp_path, capsys):
    first, second = tmp_path / "a", tmp_path / "b"
    cli(capsys, results, "--out", first)
    cli(capsys, results, "--out", second)
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir())
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    png = (first / "accuracy_vs_batch_size.png").read_bytes()
    assert b"Software" not in png and b"matplotlib version" not in png
    assert b"CreationDate" not in (first / "accuracy_vs_batch_size.pdf").read_bytes()


# ----------------------------------------------------------------------------- frames


def test_accuracy_vs_batch_size_frame(runs):
    frame = plots.accuracy_vs_batch_size_frame(runs)
    assert list(frame.columns) == [
        "mode",
        "batch_size",
        "setting",
        "mean",
        "std",
        "n",
        "n_diverged",
        "n_used",
    ]
    batch4 = row(frame, mode="batch", batch_size=4)
    assert batch4["mean"] == pytest.approx((0.60 + 0.62 + 0.67) / 3)
    assert batch4["std"] == pytest.approx(stdev([0.60, 0.62, 0.67]))
    assert (batch4["n"], batch4["n_diverged"], batch4["setting"]) == (3, 0, "momentum=constant")
    # the failed seed 3 is not counted
    batch32 = row(frame, mode="batch", batch_size=32)
    assert (batch32["mean"], batch32["n"]) == (pytest.approx(0.82), 2)
    ghost = row(frame, mode="batch (ghost)")
    assert (ghost["mean"], ghost["n"]) == (pytest.approx(0.78), 1)
    assert pd.isna(ghost["std"])
    # renorm bs 4: the incomplete seed 2 is left out
    assert row(frame, mode="renorm", batch_size=4)["mean"] == pytest.approx(0.65)
    # diverged seed 2 counted but not averaged
    ema = row(frame, mode="moving_average", setting="momentum=constant")
    assert ema["mean"] == pytest.approx(0.43)
    assert ema["std"] == pytest.approx(stdev([0.40, 0.46]))
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
    assert gap["mean"] == pytest.approx(0.10)
    assert gap["std"] == pytest.approx(stdev([0.10, 0.12, 0.08]))
    kl = row(frame, metric="kl_train_eval", mode="renorm", batch_size=32)
    assert kl["mean"] == pytest.approx(0.04)
    assert kl["std"] == pytest.approx(stdev([0.03, 0.05]))


def test_accuracy_vs_step_frame_averages_non_diverged_seeds_per_step(runs):
    frame = plots.accuracy_vs_step_frame(runs)
    assert list(frame.columns) == ["mode", "setting", "batch_size", "step", "mean", "std", "n"]
    at10 = row(frame, mode="batch", batch_size=4, step=10)
    assert at10["mean"] == pytest.approx(mean([0.50, 0.52, 0.57]))
    assert at10["std"] == pytest.approx(stdev([0.50, 0.52, 0.57]))
    at0 = row(frame, mode="renorm", batch_size=32, step=0)
    assert (at0["mean"], at0["std"], at0["n"]) == (pytest.approx(0.1), pytest.approx(0.0), 2)
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
    assert cosine["mean"] == pytest.approx(1.025)
    assert cosine["std"] == pytest.approx(stdev([1.0, 1.05]))
    accuracy = row(
        frame, momentum_kind="cosine", mode="moving_average", metric="val_acc_eval", step=20
    )
    assert accuracy["mean"] == pytest.approx(0.52)


def test_renorm_internals_frame(runs):
    frame = plots.renorm_internals_frame(runs)
    r10 = row(frame, batch_size=4, metric="r_clip_frac", step=10)
    assert (r10["mean"], r10["n"]) == (pytest.approx(0.55), 2)
    assert r10["std"] == pytest.approx(stdev([0.5, 0.6]))
    d20 = row(frame, batch_size=32, metric="d_clip_frac", step=20)
    assert d20["mean"] == pytest.approx((0.1 + 0.15) / 2)
    rmax = frame.loc[(frame["batch_size"] == 4) & (frame["metric"] == "rmax")]
    assert list(rmax["mean"]) == [1.0, 2.0, 3.0]
    assert row(frame, batch_size=4, metric="dmax", step=10)["mean"] == pytest.approx(2.5)


def test_divergence_frames(runs):
    frame = plots.divergence_frame(runs)
    assert set(frame["key"]) == {"config.momentum.kind"}  # lr and depth do not vary
    ema = row(frame, mode="moving_average", value="constant")
    assert (ema["n"], ema["n_diverged"], ema["fraction"]) == (3, 1, pytest.approx(1 / 3))
    batch = row(frame, mode="batch", value="constant")
    assert (batch["n"], batch["n_diverged"]) == (5, 0)
    traces = plots.diverged_traces_frame(runs)
    assert list(traces["step"]) == [0, 10, 15]
    assert set(traces["divergence_step"]) == {14}
    assert traces["loss"].iloc[-1] == float("inf")


def test_summary_table(runs, tmp_path):
    table = plots.summary_table(runs)
    ema = row(table, mode="moving_average", momentum="constant")
    assert (ema["n"], ema["n_diverged"]) == (3, 1)
    assert ema["diverged_frac"] == pytest.approx(1 / 3)
    assert ema["val_acc_eval_mean"] == pytest.approx(0.43)
    assert ema["best_val_acc_eval_mean"] == pytest.approx(0.43)
    batch = row(table, mode="batch", batch_size=4)
    assert batch["val_acc_train_mode_mean"] == pytest.approx(mean([0.70, 0.74, 0.75]))
    assert batch["kl_train_eval_std"] == pytest.approx(stdev([0.2, 0.3, 0.4]))
    paths = plots.write_summary(table, tmp_path)
    markdown = paths[0].read_text()
    assert "| batch | 4 | constant |" in markdown
    assert "63.0 ± 3.6" in markdown  # 100 × (0.63 ± 0.0361)
    assert "1/3" in markdown
    latex = paths[1].read_text()
    assert r"\begin{tabular}" in latex and r"63.0 $\pm$ 3.6" in latex
    assert r"moving\_average" in latex
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
        "std",
        "n",
        "n_diverged",
        "n_used",
    ]
    # the none run asked but logged nothing, the batch-64 run did not ask: both left out
    pairs = set(frame[["mode", "batch_size"]].itertuples(index=False, name=None))
    assert pairs == {("batch", 4), ("batch", 32), ("renorm", 4)}
    assert set(frame["setting"]) == {""}
    ema = row(frame, metric="val_acc_eval", mode="batch", batch_size=4)
    assert (ema["mean"], ema["std"]) == (pytest.approx(0.61), pytest.approx(stdev([0.60, 0.62])))
    assert (ema["n"], ema["n_diverged"], ema["n_used"]) == (3, 1, 2)
    precise = row(frame, metric="val_acc_precise", mode="batch", batch_size=4)
    assert precise["mean"] == pytest.approx((0.65 + 0.64) / 2)
    assert precise["std"] == pytest.approx(stdev([0.65, 0.64]))
    # paired: the spread of the per-seed differences 0.05 and 0.02
    gain = row(frame, metric="precise_minus_eval", mode="batch", batch_size=4)
    assert gain["mean"] == pytest.approx(0.035)
    assert gain["std"] == pytest.approx(stdev([0.05, 0.02]))
    assert (gain["n"], gain["n_diverged"]) == (3, 1)
    big = row(frame, metric="precise_minus_eval", mode="batch", batch_size=32)
    assert big["mean"] == pytest.approx(0.0, abs=1e-12)
    assert big["std"] == pytest.approx(stdev([0.01, -0.01]))
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
    columns = ["setting", "batch_size", "virtual_batch_size", "mode"]
    assert list(eval_mode[columns].itertuples(index=False, name=None)) == [
        ("lr=0.05", 32, 8, "batch (ghost)"),
        ("lr=0.1", 32, 4, "batch (ghost)"),
        ("lr=0.1", 32, 8, "batch (ghost)"),
        ("lr=0.1", 32, 32, "batch"),
        ("lr=0.1", 64, 8, "batch (ghost)"),
    ]
    v4 = row(eval_mode, setting="lr=0.1", batch_size=32, virtual_batch_size=4)
    assert (v4["mean"], v4["std"], v4["n"]) == (
        pytest.approx(0.72),
        pytest.approx(stdev([0.70, 0.74])),
        2,
    )
    v8 = row(eval_mode, setting="lr=0.1", batch_size=32, virtual_batch_size=8)
    assert v8["mean"] == pytest.approx((0.76 + 0.79) / 2)
    assert (v8["n"], v8["n_diverged"], v8["n_used"]) == (3, 1, 2)
    plain = row(eval_mode, batch_size=32, virtual_batch_size=32)
    assert (plain["mean"], plain["std"]) == (
        pytest.approx(0.82),
        pytest.approx(stdev([0.80, 0.84])),
    )
    assert row(eval_mode, batch_size=64)["mean"] == pytest.approx(0.735)
    single = row(eval_mode, setting="lr=0.05")
    assert (single["mean"], single["n"]) == (pytest.approx(0.60), 1) and pd.isna(single["std"])
    train_mode = frame.loc[frame["metric"] == "val_acc_train_mode"]
    t4 = row(train_mode, setting="lr=0.1", batch_size=32, virtual_batch_size=4)
    assert (t4["mean"], t4["std"]) == (pytest.approx(0.81), pytest.approx(stdev([0.80, 0.82])))
    assert row(train_mode, batch_size=32, virtual_batch_size=32)["mean"] == pytest.approx(0.85)
    assert row(train_mode, setting="lr=0.1", batch_size=32, virtual_batch_size=8)["mean"] == (
        pytest.approx(0.82)
    )
    assert row(train_mode, batch_size=64)["std"] == pytest.approx(stdev([0.80, 0.82]))
    # the main results: one ghost run (virtual 8) and plain BN at 32 (the failed seed left out)
    main = plots.ghost_batch_frame(runs)
    main = main.loc[main["metric"] == "val_acc_eval"]
    assert list(main["virtual_batch_size"]) == [8, 32] and set(main["setting"]) == {""}
    assert list(main["mean"]) == [pytest.approx(0.78), pytest.approx(0.82)]
    assert list(main["n"]) == [1, 2]


def test_summary_table_with_precise_statistics(precise_results, runs, tmp_path):
    assert "val_acc_precise_mean" not in plots.summary_table(runs)
    table = plots.summary_table(load_runs(precise_results))
    batch = row(table, mode="batch", batch_size=4)
    assert batch["val_acc_precise_mean"] == pytest.approx(0.645)
    assert batch["val_acc_precise_std"] == pytest.approx(stdev([0.65, 0.64]))
    # per run, the mean over its evaluations (steps 0, 10, 20), not the last one
    assert batch["precise_seconds_mean"] == pytest.approx(mean([0.020, 0.021]))
    assert batch["precise_seconds_std"] == pytest.approx(stdev([0.020, 0.021]))
    assert row(table, mode="renorm")["precise_seconds_mean"] == pytest.approx(0.0205)
    for mode, size in (("none", 4), ("batch", 64)):
        assert pd.isna(row(table, mode=mode, batch_size=size)["val_acc_precise_mean"])
    markdown = plots.write_summary(table, tmp_path)[0].read_text()
    assert "val. accuracy, precise stats (%) | precise-BN time per eval. (s) |" in markdown
    assert "| 64.5 ± 0.7 |" in markdown


# ----------------------------------------------------------------------------- one run


def test_run_figure_from_one_runs_metrics(results, tmp_path):
    run_dir = next((results / "runs" / "study").glob("renorm-bs4-s0-*"))
    metrics = pd.read_csv(run_dir / "metrics.csv")
    path = plots.run_figure(metrics, tmp_path / "run.png")
    assert path == tmp_path / "run.png" and path.read_bytes()[:4] == b"\x89PNG"
    without = metrics.drop(columns=["mean_shift", "val_acc_train_mode"])
    assert plots.run_figure(without, tmp_path / "bare").suffix == ".png"
    assert plots.run_figure(metrics, tmp_path / "run.pdf").read_bytes()[:5] == b"%PDF-"


def test_every_mode_has_its_own_colour():
    labels = [*plots.MODE_COLORS]
    assert len(set(plots.MODE_COLORS.values())) == len(labels) == 8
    assert plots.mode_label("batch", 8) == "batch (ghost)"
    assert plots.mode_label("batch", None) == "batch"
    assert plots.mode_color("batch (ghost)") != plots.mode_color("batch")
