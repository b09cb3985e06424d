"""Every record says where it came from (commit, dirty flag, versions, CPU) and holds no machine
path; the reproduction report shows both sides' origins."""

from __future__ import annotations

import json
import subprocess
from importlib import metadata

import pandas as pd
import yaml

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
