"""One run end to end through the real CLI: configs, records, metrics, divergence, determinism."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from normlab.config.validation import validate
from normlab.errors import ConfigError
from normlab.norms import MODES, registry


def test_one_run_writes_its_record(cli):
    result = cli("norm=renorm", "batch_size=16", "steps=40", "eval_every=20", "sweep=smoke")
    assert result.code == 0, result.err
    (run_dir,) = result.run_dirs()
    assert run_dir.parent.name == "smoke" and run_dir.name.startswith("renorm-bs16-s0-")
    assert {p.name for p in run_dir.iterdir()} >= {"config.yaml", "metrics.csv", "summary.json"}
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["norm"]["mode"] == "renorm" and config["batch_size"] == 16
    metrics = pd.read_csv(run_dir / "metrics.csv")
    assert metrics["step"].tolist() == [0, 20, 40]
    for column in (
        "loss",
        "train_acc",
        "val_acc_eval",
        "val_acc_train_mode",
        "gap_train_minus_eval",
        "kl_train_eval",
        "val_loss",
        "train_subset_acc_eval",
        "grad_norm",
        "param_norm",
        "mean_shift",
        "std_ratio",
        "r_clip_frac",
        "d_clip_frac",
        "prenorm_rms",
    ):
        assert column in metrics.columns, column
    last = metrics.iloc[-1]
    assert last["gap_train_minus_eval"] == pytest.approx(
        last["val_acc_train_mode"] - last["val_acc_eval"], abs=0.05
    )
    summary = result.summary()
    assert summary["status"] == "completed" and summary["steps"] == 40
    assert summary["final"]["val_acc_eval"] == pytest.approx(last["val_acc_eval"])
    assert summary["samples_per_s"] > 0
    assert summary["compiled_norm_step"] is True, "a CPU renorm run takes the compiled step"


def test_a_renorm_run_declares_its_clip_fractions_in_its_record(cli):
    """summary.json declares what the mode registers as its own quantities, each a column the
    run logged, drawn against one of its schedules (also logged); a mode without declares none."""
    result = cli("norm=renorm", "batch_size=8", "steps=20", "eval_every=10")
    assert result.code == 0, result.err
    declared = result.summary()["norm_quantities"]
    registered = registry.get("renorm").quantities
    assert [(d["name"], d["label"], d["percent"], d["bound"]) for d in declared] == [
        (q.name, q.label, q.percent, q.bound) for q in registered
    ]
    assert [(d["name"], d["bound"]) for d in declared] == [
        ("r_clip_frac", "rmax"),
        ("d_clip_frac", "dmax"),
    ]
    assert all(d["percent"] is True for d in declared), "fractions of channels"
    logged = pd.read_csv(result.run_dirs()[0] / "metrics.csv").columns
    assert {d["name"] for d in declared} | {d["bound"] for d in declared} <= set(logged)
    assert "norm_quantities" not in registry.choose({"mode": "batch"}).record(8)


def test_runs_are_deterministic_on_cpu(cli, tmp_path):
    args = ("norm=moving_average", "batch_size=8", "steps=30", "eval_every=10")
    first = cli(*args, results=tmp_path / "a")
    second = cli(*args, results=tmp_path / "b")
    (a,), (b,) = first.run_dirs(), second.run_dirs()
    assert a.name == b.name, "the run id is stable for the same config and seed"
    pd.testing.assert_frame_equal(pd.read_csv(a / "metrics.csv"), pd.read_csv(b / "metrics.csv"))
    other_seed = cli(*args, "seed=1", results=tmp_path / "c")
    (c,) = other_seed.run_dirs()
    assert not pd.read_csv(c / "metrics.csv")["loss"].equals(pd.read_csv(a / "metrics.csv")["loss"])


def test_huge_learning_rate_is_recorded_as_diverged(cli):
    result = cli(
        "norm=none", "model=mlp", "optim.lr=1e6", "optim.momentum=0.0", "steps=200", "eval_every=50"
    )
    assert result.code == 0, result.err
    summary = result.summary()
    assert summary["status"] == "diverged"
    assert summary["divergence_signal"] in ("nonfinite_loss", "loss_explosion", "param_norm")
    assert 1 <= summary["divergence_step"] <= 10
    metrics = pd.read_csv(result.run_dirs()[0] / "metrics.csv")
    assert metrics["step"].iloc[-1] < 200, "training stopped at the blow-up"


def test_batch_norm_at_batch_size_one_is_chance_not_a_crash(cli):
    result = cli("norm=batch", "model=mlp", "batch_size=1", "steps=60", "eval_every=30")
    assert result.code == 0, result.err
    final = result.summary()["final"]
    # every hidden unit outputs its bias whatever the input: one constant prediction
    assert final["val_acc_train_mode"] < 0.2
    assert final["kl_train_eval"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_every_mode_runs_at_every_batch_size(cli, mode):
    for batch_size in (1, 2, 4, 32, 128):
        result = cli(
            f"norm={mode}",
            f"batch_size={batch_size}",
            "steps=4",
            "eval_every=4",
            "eval.train_subset=128",
            "data.val_size=128",
        )
        assert result.code == 0, (mode, batch_size, result.err)
    statuses = {json.loads((d / "summary.json").read_text())["status"] for d in result.run_dirs()}
    assert statuses <= {"completed", "diverged"}


# ------------------------------------------------------------------------ config validation


@pytest.mark.parametrize(
    ("overrides", "key", "allowed"),
    [
        (["batch_size=0"], "batch_size", ">= 1"),
        (["optim.lr=-0.1"], "optim.lr", "> 0"),
        (["norm.mode=batchnorm"], "norm.mode", "moving_average"),
        (
            ["steps=100", "momentum=ramp", "momentum.unit=steps", "momentum.finish=500"],
            "momentum",
            "outside the run",
        ),
        (
            ["norm=renorm", "norm.rmax.kind=constant", "norm.rmax.value=0.5"],
            "norm.rmax",
            "outside",
        ),
        (
            ["norm=moving_average", "norm.update=after", "norm.grad_through_batch=true"],
            "norm.grad_through_batch",
            "update=before",
        ),
        (["norm=group", "norm.groups=5"], "norm.groups", "divisor"),
        (["data.sampler=non_iid", "data.classes_per_batch=11"], "data.classes_per_batch", "10"),
        (
            ["data.sampler=non_iid", "data.classes_per_batch=4", "batch_size=2"],
            "data.classes_per_batch",
            "batch_size=2",
        ),
        (["steps=null"], "steps", "exactly one"),
        (["pack_max_activations=-1"], "pack_max_activations", ">= 0"),
    ],
)
def test_bad_values_fail_validation_naming_key_and_allowed(compose_config, overrides, key, allowed):
    with pytest.raises(ConfigError) as error:
        validate(compose_config(*overrides))
    assert error.value.key == key
    assert allowed in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["batch_size=0"], "batch_size=0 is not allowed"),
        (["batch_size=abc"], "batch_size"),
        (["norm=batchnorm"], "norm"),
        (["optim.lr=-1"], "optim.lr=-1.0 is not allowed"),
        (["model.width=wide"], "model.width"),
    ],
)
def test_cli_rejects_bad_input_before_training(cli, args, expected):
    result = cli(*args)
    assert result.code != 0
    assert expected in result.err
    assert result.run_dirs() == [], "no run directory for a run that never started"


def test_a_divergence_found_at_a_logged_row_is_logged_once(cli):
    result = cli(
        "norm=none",
        "model=mlp",
        "optim.lr=1e6",
        "optim.momentum=0.0",
        "steps=40",
        "eval_every=1",
        "divergence.check_every=1000",
    )
    metrics = pd.read_csv(result.run_dirs()[0] / "metrics.csv")
    assert result.summary()["status"] == "diverged"
    assert metrics["step"].is_unique


@pytest.mark.parametrize("mode", ["batch", "moving_average", "renorm", "online"])
def test_bfloat16_autocast_keeps_the_norm_statistics_in_float32(cli, mode):
    result = cli(
        f"norm={mode}",
        "precision=bfloat16",
        "steps=6",
        "eval_every=3",
        "checkpoint.keep_final=true",
    )
    assert result.code == 0, result.err
    assert result.summary()["status"] == "completed"
    import torch

    state = torch.load(result.run_dirs()[0] / "checkpoint.pt", weights_only=True)
    buffers = {k: v for k, v in state["model"].items() if "running" in k}
    assert buffers and all(v.dtype == torch.float32 for v in buffers.values())
    assert all(torch.isfinite(v).all() for v in buffers.values())


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mode", ["batch", "moving_average", "renorm", "online", "group"])
def test_bfloat16_on_cuda_keeps_running_buffers_float32_and_finite(cli, mode):
    result = cli(
        f"norm={mode}",
        "device=cuda",
        "precision=bfloat16",
        "steps=20",
        "eval_every=10",
        "checkpoint.keep_final=true",
    )
    assert result.code == 0, result.err
    import torch

    state = torch.load(result.run_dirs()[0] / "checkpoint.pt", weights_only=True)
    for name, value in state["model"].items():
        if "running" in name:
            assert value.dtype == torch.float32 and torch.isfinite(value).all(), name
