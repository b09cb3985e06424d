"""What a sweep costs besides training: per-run fixed costs, and re-running a finished study.

Not a test: a measurement. Prints a table of the fixed costs of one run (median of repeats,
this machine, one process): starting Python with normlab imported, composing a job's config
with Hydra (from scratch, and from normlab's per-group cache), loading MNIST-1D from its cache,
building the model and trainer, and writing a run record (config, 10 metric rows, summary).
Then it trains a study's grid for 40 steps a run into a temporary directory and times
re-running it (every run skipped) under the basic and the joblib launcher.

    python scripts/bench_sweep.py                          # seed_question_quick: 60 runs
    python scripts/bench_sweep.py --preset blowup --jobs 2
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from normlab.config.validation import validate
from normlab.data import load_dataset
from normlab.records import RunRecord
from normlab.train import CONF_DIR, build_run_model
from normlab.trainer import Trainer


def median_seconds(work: Callable[[], object], repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def python_start() -> float:
    command = [sys.executable, "-c", "import normlab.train"]
    return median_seconds(lambda: subprocess.run(command, check=True), repeats=3)


def compose_costs(preset: str) -> tuple[float, float]:
    """One job's config from scratch (Hydra's way) and from the per-group cache."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    from hydra_plugins.normlab_launcher.normlab_launcher import TaskConfigLoader

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration("config", [f"+experiment={preset}"], RunMode.MULTIRUN)
        job = ["norm=renorm", "batch_size=4", "seed=1"]
        scratch = median_seconds(lambda: loader.load_sweep_config(master, job))
        cached = TaskConfigLoader(loader)
        cached.load_sweep_config(master, job)
        warm = median_seconds(lambda: cached.load_sweep_config(master, ["norm=renorm", "seed=2"]))
    GlobalHydra.instance().clear()
    return scratch, warm


def run_costs(preset: str, cache: str) -> dict[str, float]:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "config",
            [
                f"+experiment={preset}",
                "norm=renorm",
                f"paths.cache={cache}",
                "sweep=bench",
                "progress=off",
            ],
        )
    GlobalHydra.instance().clear()
    config = validate(cfg)
    data = load_dataset("mnist1d", cache_dir=cache)
    costs = {
        "validate the config": median_seconds(lambda: validate(cfg)),
        "load MNIST-1D (cached)": median_seconds(lambda: load_dataset("mnist1d", cache_dir=cache)),
    }
    with tempfile.TemporaryDirectory() as tmp:

        def build() -> Trainer:
            model = build_run_model(config, data)
            return Trainer(config, data, model, RunRecord(Path(tmp) / "r"), torch.device("cpu"))

        costs["build model and trainer"] = median_seconds(build)

        def write() -> None:
            record = RunRecord(Path(tmp) / f"w{time.perf_counter_ns()}")
            record.open("norm: {mode: renorm}\n")
            for step in range(10):
                record.log({"loss": 1.0, "val_acc_eval": 0.5}, step)
            record.finish({"status": "completed"})

        costs["write a record (10 rows, fsynced)"] = median_seconds(write)
    return costs


def rerun_study(preset: str, jobs: int, cache: str) -> dict[str, float]:
    """Seconds to re-run the preset's finished grid (one step a run), per launcher."""
    with tempfile.TemporaryDirectory() as tmp:
        base = [
            sys.executable,
            "-m",
            "normlab.train",
            "-m",
            f"+experiment={preset}",
            f"paths.results={tmp}",
            f"paths.cache={cache}",
            "steps=40",
            "epochs=null",
            "eval_every=40",
            "num_evals=null",
            "progress=off",
        ]
        joblib = ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}"]
        subprocess.run([*base, *joblib], check=True, capture_output=True)
        out = {}
        for name, extra in (("sequential", []), ("joblib", joblib)):
            start = time.perf_counter()
            subprocess.run([*base, *extra], check=True, capture_output=True)
            out[name] = time.perf_counter() - start
        runs = len(list(Path(tmp, "runs").rglob("summary.json")))
    return {"runs": runs, **out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="seed_question_quick")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--cache", default=".cache/normlab")
    args = parser.parse_args()
    torch.set_num_threads(1)
    scratch, cached = compose_costs(args.preset)
    rows = {
        "start Python, import normlab.train": python_start(),
        "compose a job's config (Hydra, from scratch)": scratch,
        "compose a job's config (normlab's per-group cache)": cached,
        **run_costs(args.preset, args.cache),
    }
    print(f"per-run fixed costs, median seconds (torch {torch.__version__}, 1 thread)\n")
    width = max(map(len, rows))
    for name, seconds in rows.items():
        print(f"{name.ljust(width)}  {seconds * 1000:8.1f} ms")
    rerun = rerun_study(args.preset, args.jobs, args.cache)
    print(f"\nre-running the finished {args.preset} grid ({rerun['runs']} runs, all skipped):")
    print(f"  sequential launcher      {rerun['sequential']:6.1f} s")
    print(f"  joblib, {args.jobs} jobs            {rerun['joblib']:6.1f} s")


if __name__ == "__main__":
    main()
