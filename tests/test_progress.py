"""What a person watching sees: bars on a terminal, one line per finished run in logs."""

from __future__ import annotations

import json
import time

import pytest

from normlab.progress import PROGRESS_DIR, RunProgress, SweepProgress, finished_line


def test_a_run_on_a_terminal_shows_step_total_rate_and_eta(capsys):
    bar = RunProgress(total=100, label="renorm-bs4", mode="on")
    bar.update(10, loss=0.5)
    bar.update(40, val_acc=0.25)
    bar.close()
    err = capsys.readouterr().err
    assert "renorm-bs4" in err and "40/100" in err
    assert "step/s" in err or "s/step" in err, "a rate"
    assert "<" in err, "elapsed<remaining: the ETA"


def test_a_run_in_a_log_draws_nothing(capsys):
    quiet = RunProgress(total=100, label="run", mode="auto")  # pytest captures: not a terminal
    quiet.update(50, loss=0.5)
    quiet.close()
    assert capsys.readouterr().err == ""


def test_a_worker_reports_its_steps_to_a_file_and_removes_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(PROGRESS_DIR, str(tmp_path))
    bar = RunProgress(total=20, label="batch-bs1", mode="on")
    bar.update(7)
    (report,) = tmp_path.glob("*.json")
    state = json.loads(report.read_text())
    assert (state["label"], state["step"], state["total"]) == ("batch-bs1", 7, 20)
    bar.close()
    assert not list(tmp_path.glob("*.json"))
    assert capsys.readouterr().err == "", "a worker never draws on the shared terminal"


def test_the_sweep_draws_a_line_per_running_job_from_their_files(tmp_path, capsys):
    sweep = SweepProgress(total=3, name="study", mode="on")
    with sweep.other_processes(tmp_path):
        (tmp_path / "123.json").write_text(
            json.dumps({"label": "online-bs8", "step": 5, "total": 50, "started": 0, "now": 1})
        )
        time.sleep(1.2)
    sweep.close()
    assert "online-bs8" in capsys.readouterr().err


def test_finished_line_says_status_steps_time_and_accuracy():
    summary = {
        "run_id": "batch-bs4-s0-v2-abc",
        "status": "completed",
        "steps": 300,
        "train_seconds": 10.0,
        "eval_seconds": 2.5,
        "final": {"val_acc_eval": 0.612},
    }
    assert finished_line(summary) == (
        "batch-bs4-s0-v2-abc: completed, 300 steps in 12.5 s, val_acc_eval 61.2%"
    )
    diverged = {**summary, "status": "diverged", "divergence_step": 41}
    assert finished_line(diverged).endswith("diverged at step 41")
    assert finished_line({**summary, "skipped": True}) == (
        "batch-bs4-s0-v2-abc: already completed; skipped"
    )


def test_a_sweep_in_a_log_prints_a_line_per_finished_run_and_a_count(capsys):
    sweep = SweepProgress(total=3, name="grid", mode="auto")
    sweep.job_done({"run_id": "a", "status": "completed", "steps": 3})
    sweep.job_done({"run_id": "b", "status": "diverged", "steps": 2, "divergence_step": 2})
    sweep.job_done({"run_id": "c", "status": "completed", "skipped": True})
    line = sweep.close()
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("[1/3] a: completed") and err[1].startswith("[2/3] b: diverged")
    assert len(err) == 3, "a skipped run's own line says so; the sweep adds none"
    assert line.startswith("grid: 3/3 runs (1 completed, 1 diverged, 1 skipped) in")


def test_a_sweep_on_a_terminal_counts_statuses_in_its_bar(capsys):
    sweep = SweepProgress(total=2, name="grid", mode="on")
    sweep.job_done({"run_id": "a", "status": "completed"})
    sweep.job_done(None, error="RuntimeError: boom")
    sweep.close()
    err = capsys.readouterr().err
    assert "2/2" in err and "completed=1" in err and "failed=1" in err


def test_the_basic_launcher_prints_each_finished_run_once(cli):
    result = cli("-m", "norm=batch,renorm", "steps=4", "eval_every=2", "sweep=lines")
    assert result.code == 0, result.err
    lines = [line for line in result.err.splitlines() if line.startswith("[")]
    assert [line[:5] for line in lines] == ["[1/2]", "[2/2]"]
    assert all(": completed, 4 steps in" in line for line in lines)
    assert "lines: 2/2 runs (2 completed) in" in result.err


@pytest.mark.slow
@pytest.mark.xdist_group("joblib_sweep")  # one worker runs the sweep for every test that reads it
def test_the_joblib_launcher_reports_every_run_as_its_job_ends(joblib_sweep):
    done = joblib_sweep.done
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("[")]
    assert sorted(line[:5] for line in lines) == ["[1/4]", "[2/4]", "[3/4]", "[4/4]"]
    assert "par: 4/4 runs (4 completed) in" in done.stderr
