"""scripts/check_presets.py: the runs re-running a preset would train, stage by stage for a
study (selection on the validation split, then the final seeds at the chosen factors)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import REPO

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import check_presets

from normlab.config.schema import register_configs

RUNS = REPO / "results" / "runs"


@pytest.fixture(autouse=True, scope="module")
def _configs():
    register_configs()


def test_a_study_preset_is_checked_as_normlab_study_runs_it():
    # conf/experiment/renorm_non_iid_cnn1d.yaml: norm in {batch, renorm}, lr factors
    # 0.25/0.5/1/2 with selection seed 0, then seeds 0-4
    select, final = check_presets.stages("renorm_non_iid_cnn1d", RUNS)
    assert select[0] == "renorm_non_iid_cnn1d_select"
    assert "data.eval_split=validation" in select[1]
    assert select[2] == {"optim.lr_factor": ["0.25", "0.5", "1.0", "2.0"], "seed": ["0"]}
    assert final[0] == "renorm_non_iid_cnn1d"
    assert final[2] == {"seed": ["0", "1", "2", "3", "4"]}
    assert len(list(check_presets.points("renorm_non_iid_cnn1d", select[2]))) == 2 * 4
    assert len(list(check_presets.points("renorm_non_iid_cnn1d", final[2]))) == 2 * 5


def test_a_preset_that_sweeps_its_seeds_is_one_plain_sweep():
    assert check_presets.stages("seed_question_quick", RUNS) == [("seed_question_quick", [], {})]


def test_the_committed_study_records_are_all_found(tmp_path):
    if not (RUNS / "renorm_non_iid_cnn1d").is_dir():
        pytest.skip("no committed records of renorm_non_iid_cnn1d")
    for sweep, fixed, extra in check_presets.stages("renorm_non_iid_cnn1d", RUNS):
        total, missing = check_presets.missing_runs(
            "renorm_non_iid_cnn1d", RUNS, sweep, fixed, extra
        )
        assert (total, missing) == (len(list((RUNS / sweep).glob("*/summary.json"))), [])
    empty = tmp_path / "runs"
    select = check_presets.stages("renorm_non_iid_cnn1d", empty)[0]
    total, missing = check_presets.missing_runs("renorm_non_iid_cnn1d", empty, *select)
    assert total == len(missing) == 8


def test_a_preset_that_grows_another_study_is_checked_in_that_studys_sweep():
    # conf/experiment/seed_proposal_cnn1d.yaml: moving_average under ramp and cumulative
    # momentum at the seed question's 4 batch sizes, in seed_question_cnn1d's sweep
    select, final = check_presets.stages("seed_proposal_cnn1d", RUNS)
    assert select[0] == "seed_question_cnn1d_select"
    assert final[0] == "seed_question_cnn1d"
    assert str(RUNS / "seed_question_cnn1d_select" / "lr_choice.json") in final[1][-1]
    assert len(list(check_presets.points("seed_proposal_cnn1d", select[2]))) == 2 * 4 * 4
    keys, values = check_presets.grid("seed_proposal_cnn1d")
    assert dict(zip(keys, values, strict=True)) == {
        "norm": ["moving_average"],
        "batch_size": ["1", "4", "16", "128"],
        "momentum": ["ramp", "cumulative"],
    }
