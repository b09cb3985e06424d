"""The results loader reads records wherever they now lie."""

from __future__ import annotations

import shutil

import pandas as pd

from normlab.results import load_metrics, load_runs


def test_records_moved_to_another_directory_still_load(cli, tmp_path):
    result = cli("steps=10", "eval_every=5", "sweep=moved")
    moved = tmp_path / "elsewhere"
    shutil.copytree(result.results / "runs", moved)
    shutil.rmtree(result.results)
    runs = load_runs(moved)
    assert runs["run_dir"].str.startswith(str(moved)).all()
    assert runs["status"].tolist() == ["completed"]
    metrics = load_metrics(moved, runs=runs)
    assert metrics["step"].tolist() == [0, 5, 10]
    assert (metrics["config.norm.mode"] == "batch").all()


def test_a_run_without_summary_is_incomplete_and_warned_about(cli, recwarn):
    result = cli("steps=10", "eval_every=5", "sweep=partial")
    (run_dir,) = result.run_dirs()
    (run_dir / "summary.json").unlink()
    runs = load_runs(result.results / "runs")
    assert runs["status"].tolist() == ["incomplete"]
    assert any("incomplete" in str(w.message) for w in recwarn)
    assert isinstance(load_metrics(result.results / "runs", runs=runs), pd.DataFrame)
