"""A normalization mode from outside the package, the Hydra way: ``tests/example_mode`` holds a
user's classes and ``conf/norm/NAME.yaml`` files with ``_target_``, added with
``hydra.searchpath``; nothing in ``src/`` knows them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import wandb_records
from test_sweeps import TINY

from normlab import labels
from normlab.results import load_runs

EXAMPLE = Path(__file__).parent / "example_mode"
SEARCH = f"hydra.searchpath=[file://{EXAMPLE / 'conf'}]"


@pytest.fixture
def outside(cli, monkeypatch):
    """``cli`` with the user's package importable and their config directory searched."""
    monkeypatch.syspath_prepend(str(EXAMPLE))
    return lambda *args, **kwargs: cli(SEARCH, *args, **kwargs)


def test_one_run_trains_the_users_class_under_its_yaml_name(outside):
    result = outside("norm=evonorm_b0", "momentum=cumulative", "steps=20", "eval_every=10")
    assert result.code == 0, result.err
    (run_dir,) = result.run_dirs()
    assert run_dir.name.startswith("evonorm_b0-bs32-s0-")
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["norm"] == {
        "mode": "evonorm_b0",
        "_target_": "evonorm.EvoNormB0",
        "groups": 8,
        "eps": 1e-5,
    }
    assert config["momentum"]["kind"] == "cumulative", "a running-statistics subclass's schedule"
    summary = result.summary()
    assert summary["status"] == "completed" and summary["norm"] == "evonorm_b0"
    assert summary["norm_label"] == "evonorm_b0" and summary["norm_lacks"] == []
    metrics = pd.read_csv(run_dir / "metrics.csv")
    # momentum 1/(t+1) of the step each row trained with: the schedule reached the layers
    assert metrics["momentum"].tolist() == pytest.approx([1.0, 1 / 10, 1 / 20])
    assert metrics["mean_shift"].iloc[1:].notna().all(), "the base records its diagnostics"
    assert "the layer lacks" not in result.err and "is not a normlab" not in result.err


def test_precise_statistics_work_for_a_running_statistics_subclass(outside):
    result = outside("norm=evonorm_b0", "steps=10", "eval_every=10", "eval.precise_bn=true")
    assert result.code == 0, result.err
    metrics = pd.read_csv(result.run_dirs()[0] / "metrics.csv")
    assert metrics["val_acc_precise"].notna().all()


def test_a_plain_module_trains_and_the_run_says_once_what_it_lacks(outside):
    result = outside("norm=rms", "steps=10", "eval_every=5")
    assert result.code == 0, result.err
    lacking = [line for line in result.err.splitlines() if "is not a normlab" in line]
    assert len(lacking) == 1
    assert all(w in lacking[0] for w in ("momentum schedules", "diagnostics", "precise-BN"))
    summary = result.summary()
    assert summary["status"] == "completed" and summary["norm"] == "rms"
    assert summary["norm_lacks"] == ["momentum schedules", "diagnostics", "precise-BN"]
    config = yaml.safe_load((result.run_dirs()[0] / "config.yaml").read_text())
    assert "momentum" not in config and "renorm" not in config, "only what the mode uses"


def test_a_registered_baseline_lacks_nothing_it_was_made_without(cli):
    result = cli("norm=group", "steps=4", "eval_every=4")
    assert result.code == 0, result.err
    assert "is not a normlab" not in result.err and result.summary()["norm_lacks"] == []


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["norm=evonorm_b0", "+norm.gropus=4"], "norm.gropus=4 is not allowed: a keyword of"),
        (["norm=evonorm_b0", "norm.groups=5"], "groups=5 must divide num_features=32"),
        (["norm=rms", "norm._target_=evonorm.NoSuchNorm"], "norm._target_="),
    ],
)
def test_a_bad_option_fails_before_training_in_one_line(outside, args, named):
    result = outside(*args)
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and named in lines[0], result.err
    assert result.run_dirs() == []


@pytest.mark.slow
def test_a_two_run_sweep_then_records_figures_and_a_palette_of_its_own(outside, tmp_path):
    result = outside("-m", "norm=batch,evonorm_b0", "sweep=mixed", *TINY)
    assert result.code == 0, result.err
    runs = load_runs(result.results / "runs" / "mixed")
    assert sorted(runs["norm"]) == ["batch", "evonorm_b0"]
    assert set(runs["status"]) == {"completed"}
    from normlab.plots import main as plot

    out = tmp_path / "figures"
    assert plot([str(result.results / "runs" / "mixed"), "--out", str(out)]) == 0
    assert (out / "accuracy_vs_step.png").exists()
    assert "evonorm_b0" in (out / "summary.md").read_text()
    style = labels.palette(["batch", "evonorm_b0"])["evonorm_b0"]
    built_in = labels.styles().values()
    assert style.color not in {s.color for s in built_in}
    assert style.marker not in {s.marker for s in built_in}


@pytest.mark.slow
def test_a_wandb_offline_run_carries_the_mode_name(outside, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    result = outside("logger=wandb", "norm=evonorm_b0", "sweep=dash", *TINY)
    assert result.code == 0, result.err
    (offline,) = sorted((result.results / "wandb").glob("offline-run-*"))
    run = next(r["run"] for r in wandb_records(offline) if r["type"] == "run")
    assert run["job_type"] == "evonorm_b0" and run["display_name"] == "evonorm_b0-bs32-s0"
    assert {"evonorm_b0", "momentum:constant"} <= set(run["tags"])
    summary = json.loads((result.run_dirs()[0] / "summary.json").read_text())
    assert summary["norm"] == "evonorm_b0"
    assert os.environ["WANDB_MODE"] == "offline"


def test_a_mode_from_outside_declares_a_scheduled_attribute_the_trainer_follows(outside):
    result = outside("norm=blended", "steps=20", "eval_every=10")
    assert result.code == 0, result.err
    (run_dir,) = result.run_dirs()
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["norm"]["blend"]["kind"] == "linear" and config["norm"]["blend"]["end"] == 0.0
    metrics = pd.read_csv(run_dir / "metrics.csv")
    # each row: the value the step before it trained with, 1 - s/20 at step s (a linear ramp
    # from 1 to 0 over the run)
    assert metrics["blend"].tolist() == pytest.approx([1.0, 1 - 9 / 20, 1 - 19 / 20])
    assert "is not allowed" not in result.err


@pytest.mark.parametrize(
    ("overrides", "shown"),
    [
        (["norm.blend.start=1.5"], "norm.blend=linear(start=1.5, end=0.0)"),
        (["~norm.blend"], "norm.blend=None"),
    ],
)
def test_a_bad_or_missing_schedule_of_an_outside_mode_fails_in_one_line(outside, overrides, shown):
    result = outside("norm=blended", "steps=20", *overrides)
    assert result.code == 2
    (line,) = [x for x in result.err.splitlines() if "is not allowed" in x]
    assert line.startswith(f"normlab-train: {shown} is not allowed"), line
