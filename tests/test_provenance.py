"""Every record says where it came from (commit, dirty flag, versions, CPU) and holds no machine
path; the reproduction report shows both sides' origins."""

from __future__ import annotations

import json
import subprocess
from importlib import metadata

import numpy as np
import pandas as pd
import yaml
from test_data import write_idx_files

from normlab import provenance
from normlab.plots.reproduction import origins_markdown


def _git(root, *args):
    return subprocess.run(
        ["git", "-C", str(root), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_the_commit_and_the_dirty_flag_follow_the_code_not_the_records(tmp_path):
    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)
    (repo / "results").mkdir()
    (repo / "src" / "code.py").write_text("x = 1\n")
    _git(tmp_path, "init", "-q", str(repo))
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    head = _git(repo, "rev-parse", "HEAD")
    assert provenance._git_state(repo) == (head, False)
    (repo / "results" / "run.json").write_text("{}")
    assert provenance._git_state(repo) == (head, False), "a new record is not a code change"
    (repo / "src" / "code.py").write_text("x = 2\n")
    assert provenance._git_state(repo) == (head, True)
    assert provenance._git_state(tmp_path / "nowhere") == (None, None)


def test_versions_are_the_installed_distributions():
    found = provenance.versions(("torch", "pandas", "surely-not-installed-normlab"))
    assert found["torch"] == metadata.version("torch")
    assert found["pandas"] == pd.__version__
    assert found["surely-not-installed-normlab"] is None


def test_a_run_records_its_origin_and_no_machine_path(cli):
    result = cli("steps=4", "eval_every=2", "sweep=origin")
    assert result.code == 0, result.err
    (run_dir,) = result.run_dirs()
    summary = json.loads((run_dir / "summary.json").read_text())
    repo = provenance.PROJECT
    assert summary["commit"] == _git(repo, "rev-parse", "HEAD")
    assert isinstance(summary["dirty"], bool)
    assert summary["versions"]["torch"] == metadata.version("torch")
    assert summary["versions"]["hydra-core"] == metadata.version("hydra-core")
    assert summary["cpu"] and summary["threads"] >= 1 and summary["device"] == "cpu"
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert "paths" not in config and "root" not in config["data"]
    assert str(result.results) not in (run_dir / "config.yaml").read_text()


def test_the_reproduction_report_shows_both_sides_origins():
    here = pd.DataFrame(
        {
            "commit": ["a" * 40, "a" * 40],
            "cpu": ["CPU X", "CPU X"],
            "versions.torch": ["2.13.0"] * 2,
        }
    )
    committed = pd.DataFrame({"commit": ["b" * 40], "cpu": ["CPU Y"]})
    text = origins_markdown(here, committed)
    assert "| commit | bbbbbbbbbbbb | aaaaaaaaaaaa |" in text
    assert "| CPU | CPU Y | CPU X |" in text
    assert "| torch | not recorded | 2.13.0 |" in text


def _write_mnist(root):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 64), ("t10k", 20)):
        arrays[f"{split}-images-idx3-ubyte"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}-labels-idx1-ubyte"] = (np.arange(n) % 10).astype(np.uint8)
    write_idx_files(root, arrays, compress=False)


def test_moving_the_data_retrains_nothing(cli, tmp_path):
    """A run's identity is what it trains, never where its files lie: the same files under
    another directory find every finished run."""
    first, second = tmp_path / "data_here", tmp_path / "moved" / "data_there"
    _write_mnist(first)
    sweep = ["-m", "data=mnist", "model=mlp", "seed=0,1", "steps=4", "eval_every=2"]
    small = ["eval.train_subset=16", "sweep=moved", "progress=off"]
    ran = cli(*sweep, *small, f"data.root={first}", fast=False)
    assert ran.code == 0, ran.err
    runs = sorted(p.name for p in ran.run_dirs())
    stamps = {p: p.stat().st_mtime_ns for p in (ran.results / "runs").rglob("*") if p.is_file()}
    second.parent.mkdir()
    first.rename(second)
    again = cli(*sweep, *small, f"data.root={second}", fast=False)
    assert again.code == 0, again.err
    assert again.err.count("; skipped") == 2, again.err[-2000:]
    assert sorted(p.name for p in again.run_dirs()) == runs
    now = {p: p.stat().st_mtime_ns for p in (ran.results / "runs").rglob("*") if p.is_file()}
    assert now == stamps
