"""Nothing lost, nothing accepted blindly: bad input, kills, resume, fail-soft backends."""

from __future__ import annotations

import gzip
import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import CACHE, FAST

from normlab.results import load_runs

# ------------------------------------------------------------------------ bad input


def _idx_images(count: int, truncate: int = 0) -> bytes:
    payload = bytes(count * 28 * 28)
    data = struct.pack(">IIII", 0x803, count, 28, 28) + payload
    return data[: len(data) - truncate]


def _idx_labels(count: int) -> bytes:
    return struct.pack(">II", 0x801, count) + bytes(count)


def _fashion_root(tmp_path: Path, truncate: int) -> Path:
    root = tmp_path / "fashion"
    root.mkdir()
    files = {
        "train-images-idx3-ubyte.gz": _idx_images(4, truncate),
        "train-labels-idx1-ubyte.gz": _idx_labels(4),
        "t10k-images-idx3-ubyte.gz": _idx_images(2),
        "t10k-labels-idx1-ubyte.gz": _idx_labels(2),
    }
    for name, data in files.items():
        (root / name).write_bytes(gzip.compress(data))
    return root


def _cifar_root(tmp_path: Path) -> Path:
    root = tmp_path / "cifar"
    root.mkdir()
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        (root / name).write_bytes(bytes(3073 * 2))
    (root / "data_batch_3.bin").write_bytes(bytes(3073 * 2 - 100))  # truncated record
    return root


BAD_INPUTS = [
    (["norm=batchnorm"], "norm"),
    (["model=vgg"], "model"),
    (["data=imagenet"], "data"),
    (["optim=lamb"], "optim"),
    (["logger=tensorboard"], "logger"),
    (["momentum=exponential"], "momentum"),
    (["norm=renorm", "norm.rmax=loose"], "norm.rmax"),
    (["norm=renorm", "norm.rmax.kind=loose"], "norm.rmax.kind"),
    (["foo=1"], "foo"),
    (["batch_size=abc"], "batch_size"),
    (["steps=1.5"], "steps"),
    (["norm.grad_through_batch=maybe"], "norm.grad_through_batch"),
    (["batch_size=0"], "batch_size"),
    (["batch_size=-4"], "batch_size"),
    (["batch_size=600"], "batch_size"),
    (["steps=0"], "steps"),
    (["steps=null"], "steps"),
    (["steps=null", "epochs=0"], "epochs"),
    (["eval_every=0"], "eval_every"),
    (["seed=-1"], "seed"),
    (["optim.lr=-0.1"], "optim.lr"),
    (["optim.lr=0"], "optim.lr"),
    (["optim.lr=inf"], "optim.lr"),
    (["optim.momentum=1.5"], "optim.momentum"),
    (["optim.weight_decay=-1"], "optim.weight_decay"),
    (["optim.warmup=2"], "optim.warmup"),
    (["optim.schedule=linear"], "optim.schedule"),
    (["optim.lr_scaling=quadratic"], "optim.lr_scaling"),
    (["norm.eps=0"], "norm.eps"),
    (["momentum.value=1.5"], "momentum"),
    (["momentum=ramp", "momentum.unit=steps", "momentum.finish=5000"], "momentum"),
    (["momentum=ramp", "momentum.begin=0.6", "momentum.finish=0.2"], "momentum"),
    (["norm=renorm", "norm.rmax.kind=constant", "norm.rmax.value=0.5"], "norm.rmax"),
    (["norm=renorm", "norm.dmax.kind=constant", "norm.dmax.value=-1"], "norm.dmax"),
    (
        ["norm=moving_average", "norm.update=after", "norm.grad_through_batch=true"],
        "norm.grad_through_batch",
    ),
    (["norm=group", "norm.groups=5"], "norm.groups"),
    (["norm.switch_at=1.5"], "norm.switch_at"),
    (["norm=group", "norm.switch_at=0.5"], "norm.switch_at"),
    (["norm.switch_freeze=true"], "norm.switch_freeze"),
    (["norm.virtual_batch_size=5"], "norm.virtual_batch_size"),
    (["data.sampler=sequential"], "data.sampler"),
    (["data.sampler=non_iid", "data.classes_per_batch=11"], "data.classes_per_batch"),
    (
        ["data.sampler=non_iid", "data.classes_per_batch=8", "batch_size=4"],
        "data.classes_per_batch",
    ),
    (["data.train_size=0"], "train_size"),
    (["device=tpu"], "device"),
    (["model=resnet20"], "model"),
    (["model.depth=0"], "model.depth"),
    (["divergence.loss_factor=0.5"], "divergence.loss_factor"),
    (
        ["data=fashion_mnist", "model=cnn", "paths.data=/nonexistent/normlab-data"],
        "train-images-idx3-ubyte",
    ),
]


@pytest.mark.parametrize(("args", "named"), BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_fails_before_training_naming_the_key(cli, args, named):
    result = cli(*args)
    assert result.code != 0
    assert named in result.err
    assert "Traceback" not in result.err
    assert result.run_dirs() == [], "nothing of a run that never started is left behind"


@pytest.mark.parametrize("kind", ["truncated_idx", "truncated_cifar"])
def test_corrupt_data_files_are_named(cli, tmp_path, kind):
    if kind == "truncated_idx":
        root, data, named = _fashion_root(tmp_path, truncate=10), "fashion_mnist", "train-images"
    else:
        root, data, named = _cifar_root(tmp_path), "cifar10", "data_batch_3.bin"
    result = cli(
        f"data={data}", f"data.root={root}", "model=cnn", "batch_size=2", "steps=1", fast=False
    )
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and named in lines[0], result.err
    assert result.run_dirs() == []


def test_own_errors_are_one_line(cli):
    result = cli("batch_size=0")
    assert result.err.strip().splitlines() == [
        "normlab-train: batch_size=0 is not allowed: a number >= 1"
    ]


# ------------------------------------------------------------------------ kills and resume


def _train_command(results: Path, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "normlab.train",
        f"paths.results={results}",
        "sweep=crash",
        *FAST,
        "progress=off",
        *args,
    ]


LONG = ("norm=batch", "batch_size=8", "steps=1500", "eval_every=50")


def _run_dir(results: Path) -> Path:
    (run_dir,) = [p.parent for p in (results / "runs").rglob("config.yaml")]
    return run_dir


def _wait_for_rows(results: Path, rows: int, process: subprocess.Popen, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the run ended before it could be interrupted"
        paths = list((results / "runs").rglob("metrics.csv")) if results.exists() else []
        if paths and len(paths[0].read_text().splitlines()) > rows:
            return
        time.sleep(0.02)
    raise AssertionError("run did not log in time")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> pd.DataFrame:
    results = tmp_path_factory.mktemp("uninterrupted")
    subprocess.run(_train_command(results, *LONG), check=True, capture_output=True)
    return pd.read_csv(_run_dir(results) / "metrics.csv")


@pytest.mark.slow
@pytest.mark.xdist_group("uninterrupted")  # its reference run, once
def test_sigkill_keeps_rows_and_resume_matches_an_uninterrupted_run(tmp_path, uninterrupted):
    results = tmp_path / "results"
    process = subprocess.Popen(_train_command(results, *LONG), stderr=subprocess.PIPE)
    _wait_for_rows(results, 6, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    run_dir = _run_dir(results)
    killed = pd.read_csv(run_dir / "metrics.csv")
    assert len(killed) >= 6
    pd.testing.assert_frame_equal(killed, uninterrupted.iloc[: len(killed)])
    with pytest.warns(UserWarning, match="incomplete"):
        runs = load_runs(results)
    assert runs["status"].tolist() == ["incomplete"]

    subprocess.run(_train_command(results, *LONG), check=True, capture_output=True)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["resumed_from_step"] >= 100
    pd.testing.assert_frame_equal(pd.read_csv(run_dir / "metrics.csv"), uninterrupted)


@pytest.mark.slow
@pytest.mark.xdist_group("uninterrupted")  # its reference run, once
def test_sigterm_stops_gracefully_with_checkpoint_then_resumes(tmp_path, uninterrupted):
    results = tmp_path / "results"
    process = subprocess.Popen(_train_command(results, *LONG), stderr=subprocess.PIPE)
    _wait_for_rows(results, 4, process)
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)
    run_dir = _run_dir(results)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["stop_signal"] == "SIGTERM"
    assert (run_dir / "checkpoint.pt").exists()
    subprocess.run(_train_command(results, *LONG), check=True, capture_output=True)
    resumed = json.loads((run_dir / "summary.json").read_text())
    assert resumed["status"] == "completed"
    assert resumed["resumed_from_step"] == summary["steps"]
    pd.testing.assert_frame_equal(pd.read_csv(run_dir / "metrics.csv"), uninterrupted)
    assert not (run_dir / "checkpoint.pt").exists(), "a finished run drops its checkpoint"


def test_finished_runs_are_skipped_and_overwrite_retrains(cli):
    first = cli("steps=10", "eval_every=5")
    run_dir = first.run_dirs()[0]
    stamp = (run_dir / "metrics.csv").stat().st_mtime_ns
    again = cli("steps=10", "eval_every=5")
    assert "already completed; skipped" in again.err
    assert (run_dir / "metrics.csv").stat().st_mtime_ns == stamp
    cli("steps=10", "eval_every=5", "overwrite=true")
    assert (run_dir / "metrics.csv").stat().st_mtime_ns != stamp
    assert len(pd.read_csv(run_dir / "metrics.csv")) == 3


def test_checkpoints_load_without_pickle(cli):
    result = cli("steps=20", "eval_every=10", "checkpoint.keep_final=true")
    import torch

    state = torch.load(result.run_dirs()[0] / "checkpoint.pt", weights_only=True)
    assert state["step"] == 20


def test_a_live_lock_keeps_a_second_job_out(cli, tmp_path):
    first = cli("steps=4", "eval_every=4")
    run_dir = first.run_dirs()[0]
    (run_dir / "summary.json").unlink()
    (run_dir / ".lock").write_text(f"{os.uname().nodename} {os.getppid()} -")
    result = cli("steps=4", "eval_every=4")
    assert "is being run by" in result.err
    assert not (run_dir / "summary.json").exists()


# ------------------------------------------------------------------------ fail-soft backends


def test_wandb_that_cannot_start_never_costs_the_run(cli, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "5")
    monkeypatch.setenv("WANDB_DIR", str(Path(os.environ.get("TMPDIR", "/tmp"))))
    result = cli("logger=wandb", "logger.wandb.mode=online", "steps=10", "eval_every=5")
    assert result.code == 0, result.err
    summary = result.summary()
    assert summary["status"] == "completed"
    assert "wandb" in summary["backend_errors"]
    assert len(pd.read_csv(result.run_dirs()[0] / "metrics.csv")) == 3


@pytest.mark.parametrize("pack", [True, False])
def test_exceptions_inside_training_are_recorded_as_failed(cli, monkeypatch, pack):
    from normlab import packed_trainer, trainer

    def exploding(original):
        def explode(self):
            if self.step == 3:
                raise RuntimeError("simulated fault")
            return original(self)

        return explode

    for cls in (trainer.Trainer, packed_trainer.PackedTrainer):
        monkeypatch.setattr(cls, "_train_step", exploding(cls._train_step))
    result = cli("-m", "seed=0,1", "steps=8", "eval_every=4", "sweep=faulty", f"pack={pack}")
    assert result.code == 0, "a failing run never stops the sweep"
    summaries = [json.loads((d / "summary.json").read_text()) for d in result.run_dirs()]
    assert [s["status"] for s in summaries] == ["failed", "failed"]
    assert all("simulated fault" in s["error"] for s in summaries)
    assert all(s["steps"] == 3 for s in summaries)


def test_cache_dir_is_shared(cli):
    assert CACHE.exists()
