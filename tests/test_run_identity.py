"""Run identity: what a run's config.yaml holds, and an id that survives the config's growth."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from dataclasses import dataclass

import pytest
import yaml
from conftest import REPO
from hydra.errors import ConfigCompositionException

from normlab.config.identity import ID_VERSION, from_record, norm_record, record_config, run_id
from normlab.config.schema import OptimConfig
from normlab.config.validation import validate
from normlab.errors import ConfigError
from normlab.norms import registry
from normlab.norms.options import option, positive


def test_a_batch_run_records_only_its_own_options(compose_config):
    config = record_config(validate(compose_config("norm=batch")))
    assert config["norm"] == {"mode": "batch", "eps": 1e-5, "virtual_batch_size": None}
    assert set(config["norm"]) == {"mode", "eps", "virtual_batch_size"}, "rmax/dmax are renorm's"
    assert config["momentum"]["kind"] == "constant"


def test_renorm_records_its_schedules_and_baselines_no_momentum(compose_config):
    renorm = record_config(validate(compose_config("norm=renorm")))
    assert set(renorm["norm"]) == {"mode", "eps", "rmax", "dmax"}
    assert renorm["norm"]["rmax"]["knots"] == [[0.0333, 1.0], [0.2667, 3.0]], "the paper's"
    assert renorm["norm"]["dmax"]["knots"] == [[0.0333, 0.0], [0.1667, 5.0]]
    group = record_config(validate(compose_config("norm=group")))
    assert "momentum" not in group
    assert group["norm"] == {"mode": "group", "eps": 1e-5, "groups": 8}


def test_the_id_is_readable_and_carries_its_version(compose_config):
    run = validate(compose_config("norm=renorm", "batch_size=4", "seed=3"))
    assert run_id(run).startswith(f"renorm-bs4-s3-v{ID_VERSION}-")
    other = validate(compose_config("norm=renorm", "batch_size=4", "seed=3", "norm.eps=1e-3"))
    assert run_id(other) != run_id(run)
    fixed = validate(compose_config("norm=renorm", "batch_size=4", "seed=3", "norm.rmax.value=3"))
    assert run_id(fixed) != run_id(run), "a mode's own schedules are part of its runs' ids"


@dataclass(frozen=True)
class RenormWithAnOptionMore:
    eps: float = option(1e-5, positive)
    new_option: int = option(3)


@dataclass
class OptimWithAKeyMore(OptimConfig):
    lookahead: float = 0.0


def test_adding_an_option_whose_default_keeps_behaviour_changes_no_id(compose_config):
    run = validate(compose_config("norm=renorm", "batch_size=8", "optim.lr=0.3"))
    before = run_id(run)
    run.norm = dataclasses.replace(run.norm, options=RenormWithAnOptionMore())
    run.optim = OptimWithAKeyMore(**dataclasses.asdict(run.optim))
    assert run_id(run) == before
    run.norm = dataclasses.replace(run.norm, options=RenormWithAnOptionMore(new_option=4))
    assert run_id(run) != before, "a value away from the default is what the run trains"
    run.norm = dataclasses.replace(run.norm, options=RenormWithAnOptionMore())
    run.optim = OptimWithAKeyMore(**{**dataclasses.asdict(run.optim), "lookahead": 0.5})
    assert run_id(run) != before


def test_every_registered_mode_composes_with_its_yaml(compose_config):
    for name in registry.names():
        run = validate(compose_config(f"norm={name}"))
        assert run.norm.mode == name
        assert yaml.safe_load(yaml.safe_dump(record_config(run)))["norm"]["mode"] == name


def test_rerunning_a_committed_preset_retrains_nothing(cli, tmp_path):
    """The migrated records of a committed study (scripts/migrate_records.py) are found again:
    every run of the preset's grid is skipped, nothing is rewritten."""
    preset = "seed_question_quick"
    committed = REPO / "results" / "runs" / preset
    if not committed.is_dir():
        pytest.skip(f"no committed records of {preset}")
    copy = tmp_path / "results" / "runs" / preset
    shutil.copytree(committed, copy)
    stamps = {p: p.stat().st_mtime_ns for p in copy.rglob("*") if p.is_file()}
    result = cli("-m", f"+experiment={preset}", fast=False)
    assert result.code == 0, result.err
    grid = len(list(committed.iterdir()))
    assert result.err.count("; skipped") == grid, result.err[-2000:]
    assert {p: p.stat().st_mtime_ns for p in copy.rglob("*") if p.is_file()} == stamps
    assert len(list(copy.iterdir())) == grid


def test_migration_gives_a_current_record_the_quantities_its_mode_declares(tmp_path):
    """scripts/migrate_records.py: a current-version renorm record without ``norm_quantities``
    gains the registry's declaration and nothing else; a second run, or a batch record, changes
    nothing."""
    sys.path.insert(0, str(REPO / "scripts"))
    import migrate_records

    committed = REPO / "results" / "runs" / "renorm_non_iid_mlp"
    if not committed.is_dir():
        pytest.skip("no committed records of renorm_non_iid_mlp")
    copies = {}
    for mode in ("renorm", "batch"):
        source = sorted(committed.glob(f"{mode}-bs*"))[0]
        copies[mode] = shutil.copytree(source, tmp_path / source.name)
    path = copies["renorm"] / "summary.json"
    original = json.loads(path.read_text())
    original.pop("norm_quantities", None)
    path.write_text(json.dumps(original))
    assert migrate_records.complete(copies["renorm"], dry_run=True) == ["norm_quantities"]
    assert "norm_quantities" not in json.loads(path.read_text()), "a dry run writes nothing"
    assert migrate_records.complete(copies["renorm"], dry_run=False) == ["norm_quantities"]
    migrated = json.loads(path.read_text())
    declared = migrated.pop("norm_quantities")
    assert migrated == original
    assert [(d["name"], d["label"], d["percent"], d["bound"]) for d in declared] == [
        (q.name, q.label, q.percent, q.bound) for q in registry.get("renorm").quantities
    ]
    text = path.read_text()
    assert migrate_records.complete(copies["renorm"], dry_run=False) == []
    assert path.read_text() == text
    batch = (copies["batch"] / "summary.json").read_text()
    assert migrate_records.complete(copies["batch"], dry_run=False) == []
    assert (copies["batch"] / "summary.json").read_text() == batch


def test_centred_weights_enter_the_id_only_when_on(compose_config):
    """A committed record, written before the option existed, keeps its id; turning the option
    on changes the id, and the record and the drawn label say so."""
    committed = sorted((REPO / "results" / "runs" / "seed_question_cnn1d").glob("*/config.yaml"))
    if not committed:
        pytest.skip("no committed records of seed_question_cnn1d")
    config = yaml.safe_load(committed[0].read_text())
    assert "centred_weights" not in config["model"]
    run = from_record(config)
    assert run.model.centred_weights is False
    assert run_id(run) == committed[0].parent.name
    run.model.centred_weights = True
    assert run_id(run) != committed[0].parent.name
    on = validate(compose_config("norm=mabn", "model=cnn1d", "model.centred_weights=true"))
    assert record_config(on)["model"]["centred_weights"] is True
    assert norm_record(on)["norm_label"] == "mabn + centred weights"
    off = validate(compose_config("norm=mabn", "norm.sma_backward=false"))
    assert norm_record(off)["norm_label"] == "mabn (without sma_backward)"


def test_centred_weights_is_refused_for_a_model_from_outside_and_typed(compose_config, monkeypatch):
    plugins = REPO / "tests" / "example_plugins"
    monkeypatch.syspath_prepend(str(plugins))
    outside = compose_config(
        f"hydra.searchpath=[file://{plugins / 'conf'}]",
        "model=blob_net",
        "model.name=blob_net",
        "model.centred_weights=true",
    )
    with pytest.raises(ConfigError, match=r"model\.centred_weights=True is not allowed: unset"):
        validate(outside)
    with pytest.raises(ConfigCompositionException, match="centred_weights"):
        compose_config("model.centred_weights=sometimes")
