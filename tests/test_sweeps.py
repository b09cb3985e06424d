"""Sweeps through Hydra's launchers on tiny grids, presets, and wandb offline runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import FAST, multirun_command, wandb_processes, wandb_records
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import get_class

from normlab.config.validation import validate
from normlab.train import CONF_DIR

TINY = ("steps=6", "eval_every=3", "eval.train_subset=64", "data.val_size=64")
PRESETS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


def summaries(results: Path, sweep: str) -> list[dict]:
    paths = sorted((results / "runs" / sweep).glob("*/summary.json"))
    return [json.loads(p.read_text()) for p in paths]


def test_basic_launcher_sweep_records_every_run_and_refills_only_missing(cli, tmp_path):
    grid = ("-m", "norm=batch,renorm", "batch_size=2,4", "seed=0,1", "sweep=grid", *TINY)
    first = cli(*grid)
    assert first.code == 0, first.err
    runs = summaries(first.results, "grid")
    assert len(runs) == 8 and {r["status"] for r in runs} == {"completed"}
    assert {(r["norm"], r["batch_size"], r["seed"]) for r in runs} == {
        (n, b, s) for n in ("batch", "renorm") for b in (2, 4) for s in (0, 1)
    }
    assert {r["sweep"] for r in runs} == {"grid"}
    victim = Path(runs[0]["run_dir"])
    (victim / "summary.json").unlink()  # as if killed before finishing
    again = cli(*grid)
    assert again.err.count("already completed; skipped") == 7
    assert len(summaries(again.results, "grid")) == 8


@pytest.mark.slow
def test_joblib_launcher_two_jobs_never_share_a_run_directory(tmp_path):
    results = tmp_path / "results"
    command = multirun_command(
        results,
        "parallel",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "norm=batch,moving_average",
        "seed=0,0,1",
        *TINY,
    )
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = summaries(results, "parallel")
    assert len(runs) == 4, "the duplicate seed=0 jobs map to one run id and one directory"
    for run in runs:
        metrics = pd.read_csv(Path(run["run_dir"]) / "metrics.csv")
        assert metrics["step"].tolist() == [0, 3, 6], "no interleaved writes from two jobs"
        assert run["threads"] == 1, "two jobs on two cores: one torch thread each"


@pytest.mark.slow
@pytest.mark.xdist_group("joblib_sweep")  # one worker runs the sweep for every test that reads it
def test_joblib_rerun_of_a_finished_sweep_skips_every_run_before_dispatching(
    joblib_sweep, tmp_path
):
    first = joblib_sweep.done
    assert first.returncode == 0, first.stderr[-3000:]
    # one setting's two modes on two workers: its pack split between them, two jobs
    jobs = sorted(p.name for p in joblib_sweep.root.iterdir() if p.is_dir())
    assert jobs == ["0", "1"]
    records = joblib_sweep.results / "runs"
    stamps = {p: p.stat().st_mtime_ns for p in records.rglob("*") if p.is_file()}
    again = joblib_sweep.rerun(tmp_path / "again")
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("already completed; skipped") == 4
    assert "4/4 runs (4 skipped)" in again.stderr
    # no Hydra job was set up (no job directory, no saved configs) and no record rewritten
    assert not [p for p in (tmp_path / "again").glob("*") if p.is_dir()]
    assert {p: p.stat().st_mtime_ns for p in records.rglob("*") if p.is_file()} == stamps


def test_a_pool_of_workers_gets_the_longest_jobs_first(cli):
    grid = ("hydra/launcher=joblib", "hydra.launcher.n_jobs=1", "batch_size=8,2", "seed=0")
    small = ("steps=null", "epochs=0.03", "num_evals=1", "eval.train_subset=64")
    result = cli("-m", "sweep=order", *small, *grid)
    assert result.code == 0, result.err
    runs = summaries(result.results, "order")
    assert {r["status"] for r in runs} == {"completed"}
    started = {s["batch_size"]: s["wall_clock_start"] for s in runs}
    assert started[2] < started[8], "batch 2 has four times the steps of batch 8: it goes first"


@pytest.mark.slow
def test_preempted_submitit_job_checkpoints_requeues_and_resumes(tmp_path):
    args = ("norm=renorm", "batch_size=8", "steps=1500", "eval_every=50", "threads=1")
    reference = tmp_path / "reference"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "normlab.train",
            f"paths.results={reference}",
            "sweep=preempt",
            *FAST,
            "progress=off",
            *args,
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    results = tmp_path / "results"
    command = multirun_command(
        results,
        "preempt",
        "hydra/launcher=submitit_requeue",
        "hydra.launcher.timeout_min=10",
        *args,
    )
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lock, metrics = _wait_for_run(results / "runs" / "preempt", process, rows=5)
    _host, pid, _ = lock.read_text().split()
    os.kill(int(pid), signal.SIGUSR2)  # submitit's preemption / time-out signal
    _out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    (run,) = summaries(results, "preempt")
    assert run["status"] == "completed"
    assert run["resumed_from_step"] is not None and run["resumed_from_step"] > 0
    assert run["pid"] != int(pid), "the requeued job is a new process"
    (expected,) = (reference / "runs" / "preempt").glob("*/metrics.csv")
    pd.testing.assert_frame_equal(pd.read_csv(metrics), pd.read_csv(expected))


def _wait_for_run(sweep_dir: Path, process: subprocess.Popen, rows: int):
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read().decode()[-3000:]
        for metrics in sweep_dir.glob("*/metrics.csv"):
            lock = metrics.parent / ".lock"
            if lock.exists() and len(metrics.read_text().splitlines()) > rows:
                return lock, metrics
        time.sleep(0.05)
    raise AssertionError("the job never logged")


# ------------------------------------------------------------------------ presets


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_composes_validates_and_defines_its_grid(preset):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"+experiment={preset}"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert params, f"{preset} names its sweep grid"
    # a preset writes its own sweep, or adds cells to another preset's (seed_proposal_mlp
    # grows seed_question_mlp)
    assert cfg.sweep == preset or cfg.sweep in PRESETS
    for key, values in params.items():
        first = str(values).split(",")[0]
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            point = compose("config", overrides=[f"+experiment={preset}", f"{key}={first}"])
        validate(point, total_steps=1000)
    GlobalHydra.instance().clear()


@pytest.mark.parametrize(
    ("preset", "sizes"),
    [
        ("seed_question_quick", ["1", "4", "16", "128"]),
        ("seed_question_mlp", ["1", "2", "4", "8", "16", "32", "128"]),
    ],
)
def test_seed_question_grids_cover_every_mode_and_batch_sizes_1_to_128(preset, sizes):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"+experiment={preset}"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert set(params["norm"].split(",")) >= {"batch", "moving_average", "renorm", "online"}
    assert params["batch_size"].split(",") == sizes
    assert cfg.data.name == "mnist1d" and cfg.model.name == "mlp"
    seeds = params["seed"].split(",") if "seed" in params else list(map(str, cfg.study.seeds))
    assert len(seeds) >= 3


def test_study_presets_choose_lr_on_a_grid_and_report_five_seeds():
    for preset in PRESETS:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=[f"+experiment={preset}"])
        if len(cfg.study.seeds) > 1:
            assert len(cfg.study.seeds) >= 5, preset
            assert 1.0 in cfg.study.lr_factors and len(cfg.study.lr_factors) >= 3, preset
    GlobalHydra.instance().clear()


# ------------------------------------------------------------------------ wandb


@pytest.mark.slow
def test_wandb_offline_runs_carry_group_tags_config_and_history(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    before = wandb_processes()
    result = cli("-m", "logger=wandb", "norm=batch,renorm", "batch_size=4", "sweep=dash", *TINY)
    assert result.code == 0, result.err
    offline = sorted((result.results / "wandb").glob("offline-run-*"))
    assert len(offline) == 2
    seen = {}
    for run_dir in offline:
        records = wandb_records(run_dir)
        run = next(r["run"] for r in records if r["type"] == "run")
        history = [r["history"]["item"] for r in records if r["type"] == "history"]
        steps = [h["step"] for h in history if "val_acc_eval" in h]
        assert run["run_group"] == "dash"
        assert run["display_name"] in ("batch-bs4-s0", "renorm-bs4-s0")
        assert {"bs4", "momentum:constant"} <= set(run["tags"])
        assert run["job_type"] == run["display_name"].split("-")[0]
        config = run["config"]["update"]
        assert config["batch_size"] == 4 and config["norm"]["mode"] == run["job_type"]
        assert steps == [0, 3, 6]
        assert any(k.startswith("figures/") for h in history for k in h), "the run's figure"
        seen[run["display_name"]] = history
    local = summaries(result.results, "dash")
    for summary in local:
        name = f"{summary['norm']}-bs4-s0"
        metrics = pd.read_csv(Path(summary["run_dir"]) / "metrics.csv")
        logged = [h["val_acc_eval"] for h in seen[name] if "val_acc_eval" in h]
        assert logged == pytest.approx(metrics["val_acc_eval"].tolist())
    assert wandb_processes() <= before, "wandb-core exits with each run"


@pytest.mark.parametrize(
    ("launcher", "hydra_launcher"),
    [
        ("sequential", "hydra._internal.core_plugins.basic_launcher.BasicLauncher"),
        ("joblib", "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"),
        ("slurm", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"),
        (
            "submitit_requeue",
            "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher",
        ),
    ],
)
def test_normlab_launchers_compose_and_hand_jobs_to_hydras_own(launcher, hydra_launcher):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
        default = compose("config", return_hydra_config=True)
        normlab = get_class(cfg.hydra.launcher._target_)
        delegate = get_class(normlab().delegate)
    GlobalHydra.instance().clear()
    assert default.hydra.runtime.choices["hydra/launcher"] == "sequential"
    assert normlab.__module__ == "hydra_plugins.normlab_launcher.normlab_launcher"
    # by name: Hydra's plugin scan runs each plugin module again, making its classes anew
    assert hydra_launcher in {f"{c.__module__}.{c.__qualname__}" for c in delegate.__mro__}
    if launcher == "joblib":
        assert cfg.hydra.launcher.n_jobs == -1, "the joblib plugin's own options and defaults"
    if launcher == "slurm":
        assert cfg.hydra.launcher.signal_delay_s > 0 and cfg.hydra.launcher.max_num_timeout > 0


@pytest.mark.parametrize(
    "job",
    [
        ["norm=renorm", "batch_size=4", "seed=1"],
        ["optim=adamw", "optim.lr=0.05", "norm=online", "model=mlp"],
        ["eval={train_subset: 64, precise_bn: true}", "data.val_size=128", "tags=[a,b]"],
        ["norm=renorm", "norm.rmax={kind: constant, value: 2.0, knots: null}"],
        ["+experiment=blowup", "norm=batch", "seed=3"],
        ["+extra=1", "norm=batch"],  # not a plain override: composed in full
    ],
)
def test_task_configs_are_hydras_own_composition_of_each_job(job):
    from hydra.types import RunMode
    from omegaconf import OmegaConf, open_dict

    from hydra_plugins.normlab_launcher.normlab_launcher import TaskConfigLoader

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration("config", ["sweep=x"], RunMode.MULTIRUN)
        task_configs = TaskConfigLoader(loader)
        first, again = (task_configs.load_sweep_config(master, job) for _ in range(2))
        hydras = loader.load_sweep_config(master, job)
    GlobalHydra.instance().clear()
    with open_dict(hydras):
        del hydras["hydra"]
    expected = OmegaConf.to_container(hydras, resolve=True)
    assert OmegaConf.to_container(first, resolve=True) == expected
    assert OmegaConf.to_container(again, resolve=True) == expected, "from its group's cache"


def test_task_configs_fail_as_hydra_does_on_a_key_the_config_lacks():
    from hydra.errors import ConfigCompositionException
    from hydra.types import RunMode

    from hydra_plugins.normlab_launcher.normlab_launcher import TaskConfigLoader

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration("config", [], RunMode.MULTIRUN)
        task_configs = TaskConfigLoader(loader)
        with pytest.raises(ConfigCompositionException, match="batchsize"):
            task_configs.load_sweep_config(master, ["norm=batch", "batchsize=4"])
    GlobalHydra.instance().clear()


def test_submitit_preemption_hook_checkpoints_the_running_trainer_then_requeues(
    compose_config, tmp_path
):
    from submitit.helpers import DelayedSubmission

    from hydra_plugins.normlab_launcher.normlab_launcher import CheckpointingLocalLauncher
    from normlab.checkpoint import load_checkpoint
    from normlab.records import CHECKPOINT_FILE, RunRecord
    from normlab.signals import SignalGuard
    from normlab.train import build_run_model, load_run_data
    from normlab.trainer import Trainer

    config = validate(compose_config("steps=4", "eval_every=2"))
    cpu = torch.device("cpu")
    data = load_run_data(config, cpu)
    model = build_run_model(config, data)
    checkpoint = tmp_path / "run" / CHECKPOINT_FILE
    trainer = Trainer(config, data, model, RunRecord(tmp_path / "run"), cpu, checkpoint)
    launcher = CheckpointingLocalLauncher(submitit_folder=str(tmp_path / "submitit"))
    job = (["norm=batch"], "hydra.sweep.dir", 0, "job_id_for_0", {})
    with SignalGuard(trainer):
        requeue = launcher.checkpoint(*job)
    saved = load_checkpoint(checkpoint)
    for name, tensor in model.state_dict().items():
        assert torch.equal(saved["model"][name], tensor)
    assert trainer.stop_signal == "preempted"
    assert isinstance(requeue, DelayedSubmission), "submitit requeues what the hook returns"
    assert requeue.function is launcher and requeue.args == job


@pytest.mark.slow
def test_submitit_requeue_launcher_runs_only_unfinished_jobs(cli, tmp_path):
    first = cli("-m", "norm=batch", "sweep=mixed", *TINY)
    assert first.code == 0, first.err
    sweep_dir = tmp_path / "sweep"
    mixed = cli(
        "-m",
        "hydra/launcher=submitit_requeue",
        "hydra.launcher.timeout_min=5",
        f"hydra.sweep.dir={sweep_dir}",
        "norm=batch,renorm",
        "sweep=mixed",
        *TINY,
    )
    assert mixed.code == 0, mixed.err
    assert mixed.err.count("already completed; skipped") == 1
    assert "mixed: 2/2 runs (1 completed, 1 skipped)" in mixed.err
    assert [line[:6] for line in mixed.err.splitlines() if ": completed," in line] == ["[2/2] "]
    assert {r["norm"]: r["status"] for r in summaries(mixed.results, "mixed")} == {
        "batch": "completed",
        "renorm": "completed",
    }
    (job,) = [p for p in (sweep_dir / ".submitit").iterdir() if p.name.isdigit()]  # its job id
    assert list(job.glob("*_result.pkl")), "only the unfinished run went to submitit"
    assert not list(sweep_dir.glob(".normlab-progress-*")), "its report folder is removed"
