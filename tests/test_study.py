"""normlab-study: learning rates chosen on a validation split, reported on the test split."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml
from conftest import FAST

from normlab import study
from normlab.config.validation import validate


def test_the_best_mean_validation_accuracy_wins_and_a_blow_up_scores_zero(compose_config):
    run = validate(compose_config("norm=batch", "batch_size=8"))
    other = validate(compose_config("norm=renorm", "batch_size=8"))

    def at(base, factor, seed):
        overrides = (f"norm={base.norm.mode}", "batch_size=8", f"optim.lr_factor={factor}")
        return validate(compose_config(*overrides, f"seed={seed}"))

    runs = [
        {"run": at(run, 0.5, 0), "status": "completed", "accuracy": 0.60},
        {"run": at(run, 0.5, 1), "status": "completed", "accuracy": 0.64},  # mean 0.62
        {"run": at(run, 1.0, 0), "status": "completed", "accuracy": 0.70},
        {"run": at(run, 1.0, 1), "status": "diverged", "accuracy": 0.90},  # counts 0: mean 0.35
        {"run": at(run, 2.0, 0), "status": "failed", "accuracy": 0.99},  # not a finished run
        {"run": at(other, 0.5, 0), "status": "completed", "accuracy": 0.5},
        {"run": at(other, 2.0, 0), "status": "completed", "accuracy": 0.5},  # tie: nearer 1 ...
        {"run": at(other, 1.0, 0), "status": "completed", "accuracy": 0.5},  # ... is 1
    ]
    choice = study.choose(runs)
    assert choice[study.cell_id(run)]["lr_factor"] == 0.5
    assert choice[study.cell_id(run)]["scores"] == {"0.5": pytest.approx(0.62), "1.0": 0.35}
    assert choice[study.cell_id(other)]["lr_factor"] == 1.0
    assert study.cell_id(run) == study.cell_id(at(run, 2.0, 3)), "seed and factor are no cell"
    assert study.cell_id(run) != study.cell_id(other)
    plain = [
        validate(compose_config(f"norm={mode}", "batch_size=8")) for mode in ("online", "group")
    ]
    assert study.cell_id(plain[0]) != study.cell_id(plain[1]), "modes at their defaults differ"


@pytest.mark.slow
def test_a_study_selects_on_validation_then_reports_every_seed_on_test(tmp_path, monkeypatch):
    results = tmp_path / "results"
    monkeypatch.setattr(sys, "argv", ["normlab-study"])
    args = [
        "seed_question_mlp",
        f"paths.results={results}",
        *FAST,
        "progress=off",
        "norm=batch",
        "batch_size=32",
        "epochs=1",
        "num_evals=1",
        "study.lr_factors=[0.5,1.0]",
        "study.seeds=[0,1]",
        "--skip-figures",
    ]
    assert study.main(args) == 0
    select = sorted((results / "runs" / "seed_question_mlp_select").glob("*/config.yaml"))
    assert len(select) == 2
    configs = [yaml.safe_load(p.read_text()) for p in select]
    assert {c["optim"]["lr_factor"] for c in configs} == {0.5, 1.0}
    assert {c["data"]["eval_split"] for c in configs} == {"validation"}
    choice = json.loads(
        (results / "runs" / "seed_question_mlp_select" / "lr_choice.json").read_text()
    )
    ((_, chosen),) = choice.items()
    scores = chosen["scores"]
    assert chosen["lr_factor"] == float(max(scores, key=scores.get))
    final = sorted((results / "runs" / "seed_question_mlp").glob("*/config.yaml"))
    finals = [yaml.safe_load(p.read_text()) for p in final]
    assert sorted(c["seed"] for c in finals) == [0, 1]
    assert {c["optim"]["lr_factor"] for c in finals} == {chosen["lr_factor"]}
    assert {c["data"]["eval_split"] for c in finals} == {"test"}
    assert all(c["optim"]["lr_choice"] is None for c in finals), "the record keeps the factor"
    summary = json.loads((final[0].parent / "summary.json").read_text())
    assert summary["status"] == "completed"
    # again: every stage finds its runs, nothing trains
    assert study.main(args) == 0
    again = sorted(Path(p) for p in (results / "runs" / "seed_question_mlp").glob("*/config.yaml"))
    assert again == final
    # a final run trained under another choice is moved aside, not averaged in
    stale = final[0].parent.with_name(final[0].parent.name.replace("-s0-", "-s9-"))
    final[0].parent.rename(stale)
    config = yaml.safe_load((stale / "config.yaml").read_text())
    config["optim"]["lr_factor"] = 7.0
    (stale / "config.yaml").write_text(yaml.safe_dump(config))
    moved = study.move_superseded(results / "runs" / "seed_question_mlp", choice)
    assert [p.name for p in moved] == [stale.name]
    assert (results / "runs" / "seed_question_mlp_superseded" / stale.name).is_dir()
