"""``normlab-plot --wandb`` and ``normlab-claims --wandb``: one offline summary run each in
the sweep's group, read back with wandb's own reader (``wandb leet inspect --json``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import wandb_processes, wandb_records
from test_claims import build

from normlab import claims, plots


def markdown_rows(text: str) -> list[list[str]]:
    """The body rows of the first pipe table in ``text``."""
    lines = [line for line in text.split("\n\n")[1].splitlines() if line.startswith("| ")]
    return [line[2:-2].split(" | ") for line in lines[1:]]


def logged(run_dir: Path) -> tuple[dict, dict]:
    records = wandb_records(run_dir)
    run = next(r["run"] for r in records if r["type"] == "run")
    (history,) = [r["history"]["item"] for r in records if r["type"] == "history"]
    return run, history


def table(run_dir: Path, history: dict, name: str) -> dict:
    assert history[f"tables/{name}._type"] == "table-file"
    return json.loads((run_dir / "files" / history[f"tables/{name}.path"]).read_text())


@pytest.mark.slow
def test_figures_and_tables_land_in_one_summary_run_per_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    before = wandb_processes()
    root = build(tmp_path / "results")
    sweep, out = root / "runs" / "gn", tmp_path / "figures"
    assert plots.main([str(sweep), "--out", str(out), "--wandb"]) == 0
    assert claims.main([str(sweep), "--out", str(out / "claims.md"), "--wandb"]) == 0
    capsys.readouterr()
    offline = sorted((root / "wandb").glob("offline-run-*"))  # under the results tree
    assert len(offline) == 2
    runs = {logged(d)[0]["job_type"]: (d, *logged(d)) for d in offline}
    assert set(runs) == {"summary-plots", "summary-claims"}

    run_dir, run, history = runs["summary-plots"]
    assert run["run_group"] == "gn" and "summary" in run["tags"]
    figures = {p.stem for p in out.glob("*.png")}
    assert figures and {k.split(".")[0] for k in history if k.startswith("figures/")} == {
        f"figures/{name}" for name in figures
    }
    assert all(history[f"figures/{name}._type"] == "image-file" for name in figures)
    summary = table(run_dir, history, "summary")
    assert summary["data"] == markdown_rows((out / "summary.md").read_text())

    run_dir, run, history = runs["summary-claims"]
    assert run["run_group"] == "gn"
    verdicts = table(run_dir, history, "claims")
    verdict = verdicts["columns"].index("verdict")
    shown = markdown_rows((out / "claims.md").read_text())
    assert [row[verdict] for row in verdicts["data"]] == [row[verdict] for row in shown]
    assert dict((row[0], row[verdict]) for row in verdicts["data"])["gn_flat"] == "holds"
    beside = table(run_dir, history, "papers")
    assert "paper effect (pp)" in beside["columns"] and len(beside["data"]) >= 12
    assert table(run_dir, history, "claims_evidence")["data"]
    assert wandb_processes() <= before, "wandb-core exits after each summary run"
