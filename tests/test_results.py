"""The results loader reads records wherever they now lie, old and new formats alike."""

from __future__ import annotations

import shutil

import pandas as pd
from records import migration_script, write_record

from normlab.results import load_metrics, load_runs, load_traces


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


def _old_record(root, run_id, norm, summary):
    config = {"norm": norm, "batch_size": 32, "seed": 0, "model": {"name": "mlp"}}
    rows = [{"step": 0, "loss": 2.3}, {"step": 10, "loss": 2.0}]
    base = {"status": "completed", "final": {"val_acc_eval": 0.5}}
    return write_record(root, "old", run_id, config, {**base, **summary}, rows)


def test_old_records_get_label_and_statistics_batch_size_from_the_migration(tmp_path):
    every = {"eps": 1e-5, "groups": 8, "grad_through_batch": False, "alpha_fwd": 0.999}
    _old_record(tmp_path, "ghost", {**every, "mode": "batch", "virtual_batch_size": 4}, {})
    _old_record(tmp_path, "plain", {**every, "mode": "batch", "virtual_batch_size": None}, {})
    through = {**every, "mode": "moving_average", "grad_through_batch": True}
    _old_record(tmp_path, "through", through, {})
    _old_record(tmp_path, "outside", {"mode": "mine", "_target_": "my.Norm"}, {})
    stopped = {"status": "diverged", "divergence_signal": "param_norm", "divergence_step": 70}
    _old_record(tmp_path, "grown", {**every, "mode": "batch"}, stopped)
    script = migration_script()
    for run_dir in sorted((tmp_path / "runs" / "old").iterdir()):
        script.complete(run_dir, dry_run=False)
    runs = load_runs(tmp_path).set_index("run_id")
    assert runs.loc["ghost", "norm_label"] == "batch (ghost)"
    assert runs.loc["ghost", "statistics_batch_size"] == 4
    assert (runs.loc["plain", "norm_label"], runs.loc["plain", "statistics_batch_size"]) == (
        "batch",
        32,
    )
    assert runs.loc["through", "norm_label"] == "moving_average (grad through batch)"
    assert runs.loc["outside", "norm_label"] == "mine"  # not registered: its own name
    assert runs.loc["grown", "param_norm_growth_step"] == 70  # growth, recorded as its own


def test_new_records_are_read_as_written(tmp_path):
    norm = {"mode": "batch", "eps": 1e-5, "virtual_batch_size": None}
    written = {
        "norm_label": "custom label",
        "statistics_batch_size": 8,
        "values_per_channel": {"a": 320, "b": 80, "c": 160},
    }
    run_dir = _old_record(tmp_path, "new", norm, written)
    trace = [{"step": s, "loss": 2.0, "prenorm_bias_norm": 1.0 + s} for s in (0, 1, 9, 10)]
    pd.DataFrame(trace).to_csv(run_dir / "trace.csv", index=False)
    runs = load_runs(tmp_path)
    assert runs.loc[0, "norm_label"] == "custom label"
    assert runs.loc[0, "statistics_batch_size"] == 8
    assert runs.loc[0, "values_per_channel_min"] == 80  # the fewest over the layers
    traces = load_traces(runs)
    assert traces["step"].tolist() == [0, 1, 9, 10]
    assert set(traces["run_dir"]) == {str(run_dir)}
