"""Shared fixtures: the real Hydra configs, composed or run through the real CLI in-process."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from normlab.train import CONF_DIR

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache" / "normlab"
# Small but real: a 3-layer 1-D CNN on MNIST-1D; every test run uses the shared data cache.
# `make test` runs two pytest workers on two cores: one torch thread each, in the workers and in
# the runs they start, or the threads of both workers fight over the same cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

FAST = ["data.train_size=512", "data.val_size=256", "eval.train_subset=128", f"paths.cache={CACHE}"]


def randomize_affine(layer, seed=0):
    """Weights in [0.5, 1.5) and normal biases, the same for the same seed: references must not
    pass by the grace of the identity affine."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.weight.copy_(torch.rand(layer.weight.shape, generator=g) + 0.5)
        layer.bias.copy_(torch.randn(layer.bias.shape, generator=g))
    return layer


@pytest.fixture(scope="module")
def float64_module():
    """float64 as the default dtype for one test module's references, restored afterwards.
    Set in a fixture, not at import: collection imports every test module before any runs."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture(params=["compiled", "pytorch"])
def step_path(request, monkeypatch):
    """Runs a test once per training-step path of batch, moving_average, renorm and online: the
    compiled CPU ops (which must build here) and the pure-PyTorch layers. Layers built in the
    test take it (``compiled_step`` defaults to ``kernels.ENABLED``)."""
    from normlab.norms import kernels

    compiled = request.param == "compiled"
    if compiled:
        assert kernels.extension() is not None, "the compiled norm kernels failed to build"
    monkeypatch.setattr(kernels, "ENABLED", compiled)
    return request.param


@pytest.fixture(params=["compiled", "pytorch"])
def packed_ops(request, monkeypatch):
    """Runs a test once per path of a packed model's linear layers: the compiled CPU op
    (``normlab::packed_linear``, which must build here) and the autograd.Function."""
    from normlab import extension

    compiled = request.param == "compiled"
    if compiled:
        assert extension.entries() is not None, "the compiled CPU kernels failed to build"
    monkeypatch.setattr(extension, "ENABLED", compiled)
    return request.param


@pytest.fixture
def compose_config(tmp_path):
    """``compose_config(*overrides)``: the composed config, results under ``tmp_path``."""

    def _compose(*overrides: str):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(
                "config",
                overrides=[
                    f"paths.results={tmp_path / 'results'}",
                    "sweep=test",
                    *FAST,
                    *overrides,
                ],
            )

    return _compose


class CliResult:
    def __init__(self, code: int, out: str, err: str, results: Path) -> None:
        self.code, self.out, self.err, self.results = code, out, err, results

    def run_dirs(self) -> list[Path]:
        return sorted(p.parent for p in (self.results / "runs").rglob("config.yaml"))

    def summary(self) -> dict:
        (run_dir,) = self.run_dirs()
        return json.loads((run_dir / "summary.json").read_text())


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    """Run ``normlab-train ARGS`` in this process, as a user would type it."""

    def _cli(*args: str, results: Path | None = None, fast: bool = True) -> CliResult:
        from normlab.train import main

        results = results or tmp_path / "results"
        flags = [a for a in args if a.startswith("-")]
        overrides = [a for a in args if not a.startswith("-")]
        argv = [
            "normlab-train",
            *flags,
            f"paths.results={results}",
            *(FAST if fast else []),
            "progress=off",
            *overrides,
        ]
        GlobalHydra.instance().clear()
        monkeypatch.setattr(sys, "argv", argv)
        capsys.readouterr()
        try:
            main()
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        finally:
            GlobalHydra.instance().clear()
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err, results)

    return _cli


def multirun_command(results: Path, sweep: str, *args: str) -> list[str]:
    """``normlab-train -m`` in a new process, writing into ``results`` as sweep ``sweep``."""
    return [
        sys.executable,
        "-m",
        "normlab.train",
        "-m",
        f"paths.results={results}",
        f"sweep={sweep}",
        *FAST,
        *args,
    ]


# one setting, two modes, two seeds through Hydra's joblib launcher on two workers
JOBLIB_SWEEP = (
    "hydra/launcher=joblib",
    "hydra.launcher.n_jobs=2",
    "norm=batch,online",
    "seed=0,1",
    "steps=6",
    "eval_every=3",
    "progress=off",
)


def _joblib_sweep(results: Path, sweep_dir: Path) -> subprocess.CompletedProcess:
    command = multirun_command(results, "par", *JOBLIB_SWEEP, f"hydra.sweep.dir={sweep_dir}")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)


@dataclasses.dataclass(frozen=True)
class JoblibSweep:
    """A finished :data:`JOBLIB_SWEEP` (a setting's pack, split between the two workers): its
    records, its Hydra sweep folder and what it printed."""

    results: Path
    root: Path
    done: subprocess.CompletedProcess

    def rerun(self, sweep_dir: Path) -> subprocess.CompletedProcess:
        return _joblib_sweep(self.results, sweep_dir)


@pytest.fixture(scope="session")
def joblib_sweep(tmp_path_factory) -> JoblibSweep:
    """One joblib sweep for the tests that check what it prints, writes and skips when rerun
    (each such sweep starts three Python processes: most of a test's time)."""
    tmp = tmp_path_factory.mktemp("joblib_sweep")
    results, root = tmp / "results", tmp / "first"
    return JoblibSweep(results, root, _joblib_sweep(results, root))


def wandb_records(run_dir: Path) -> list[dict]:
    """An offline wandb run read back with wandb's own reader (``wandb leet inspect --json``)."""
    wandb = Path(sys.executable).parent / "wandb"
    out = subprocess.run(
        [str(wandb), "leet", "inspect", "--json", str(run_dir)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def wandb_processes() -> int:
    out = subprocess.run(["pgrep", "-x", "wandb-core"], capture_output=True, text=True)
    return len(out.stdout.split())
