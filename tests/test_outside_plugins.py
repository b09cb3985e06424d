"""A data set and a model from outside the package, the Hydra way: ``tests/example_plugins``
holds a user's module and ``conf/data/blobs.yaml`` / ``conf/model/blob_net.yaml`` with
``_target_``, added with ``hydra.searchpath``; nothing in ``src/`` knows them."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from normlab import data, models
from normlab.config.identity import from_record, run_id
from normlab.config.validation import validate

EXAMPLE = Path(__file__).parent / "example_plugins"
SEARCH = f"hydra.searchpath=[file://{EXAMPLE / 'conf'}]"
# the blobs data set has 480 / 120 examples: the shared FAST sizes are cut to fit
SIZES = ["data.train_size=360", "data.val_size=120"]


@pytest.fixture
def outside(cli, monkeypatch):
    """``cli`` with the user's module importable and their config directory searched."""
    monkeypatch.syspath_prepend(str(EXAMPLE))
    return lambda *args, **kwargs: cli(SEARCH, *args, **kwargs)


def test_the_users_data_set_and_model_train_and_are_recorded(outside):
    result = outside(
        "data=blobs",
        "model=blob_net",
        *SIZES,
        "steps=40",
        "eval_every=20",
        "checkpoint.keep_final=true",
    )
    assert result.code == 0, result.err
    (run_dir,) = result.run_dirs()
    assert result.summary()["status"] == "completed"
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["data"]["name"] == "blobs", "named after its YAML file"
    assert config["data"]["_target_"] == "blobs.gaussian_blobs"
    assert config["data"]["options"] == {"train": 480, "val": 120, "classes": 3, "length": 8}
    assert (config["data"]["input_shape"], config["data"]["num_classes"]) == ([2, 8], 3)
    assert config["model"]["name"] == "blob_net"
    assert config["model"]["_target_"] == "blobs.BlobNet"
    assert config["model"]["options"] == {"hidden": 16}
    # the blobs lie 4 unit-noise apart per coordinate: a trained model tells them apart, chance
    # is 1/3
    assert pd.read_csv(run_dir / "metrics.csv")["val_acc_eval"].iloc[-1] > 0.9
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]
    assert state["norm.running_mean"].shape == (16,), "norm(hidden) built the run's batch norm"


def test_a_record_of_outside_plugins_reads_back_to_the_same_run(outside):
    result = outside("data=blobs", "model=blob_net", *SIZES, "steps=2", "eval_every=2")
    assert result.code == 0, result.err
    (run_dir,) = result.run_dirs()
    run = validate(from_record(yaml.safe_load((run_dir / "config.yaml").read_text())))
    assert run_id(run) == run_dir.name, "a study finds the run again from its record"


@pytest.mark.parametrize(
    "choice", [["data=blobs", "model=mlp", *SIZES], ["data=mnist1d", "model=blob_net"]]
)
def test_an_outside_piece_trains_with_a_registered_one(outside, choice):
    result = outside(*choice, "steps=4", "eval_every=4")
    assert result.code == 0, result.err
    assert result.summary()["status"] == "completed"


def test_sizes_the_validation_split_and_the_sampler_apply_to_an_outside_data_set(outside):
    result = outside(
        "data=blobs",
        "model=blob_net",
        "data.train_size=96",
        "data.val_size=120",
        "data.eval_split=validation",
        "data.sampler=non_iid",
        "steps=null",
        "epochs=1",
        "eval_every=1",
        "checkpoint.keep_final=true",
    )
    assert result.code == 0, result.err
    (run_dir,) = result.run_dirs()
    # 96 kept, round(0.125 * 96) = 12 held out: 84 to train on, 84 // 32 = 2 full batches
    assert pd.read_csv(run_dir / "metrics.csv")["step"].tolist() == [0, 1, 2]
    sampler = torch.load(run_dir / "checkpoint.pt", weights_only=True)["sampler"]["config"]
    assert sampler["kind"] == "non_iid" and sampler["num_examples"] == 84


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (
            ["data.name=nope"],
            "data.name='nope' is not allowed: one of mnist1d, mnist, mnist_5k, fashion_mnist, "
            "cifar10, or a data config with _target_",
        ),
        (["model.name=nope"], "model.name='nope' is not allowed: one of mlp, cnn1d, cnn,"),
        (
            ["data=blobs", "data._target_=blobs.no_such_function"],
            "data._target_='blobs.no_such_function' is not allowed: an importable name",
        ),
        (
            ["model=blob_net", "model._target_=nowhere.Net"],
            "model._target_='nowhere.Net' is not allowed: an importable name",
        ),
        (
            ["model=blob_net", "model._target_=blobs.HiddenOnly"],
            "model._target_='blobs.HiddenOnly' is not allowed: a callable as "
            "HiddenOnly(input_shape, num_classes, norm, **options): too many positional",
        ),
        (
            ["model=blob_net", "+model.options.widht=3"],
            "model.options.widht=3 is not allowed: a keyword of blobs.BlobNet: hidden",
        ),
        (
            ["data=blobs", "+data.options.noise=2"],
            "data.options.noise=2 is not allowed: a keyword of blobs.gaussian_blobs: train,",
        ),
        (["model=blob_net", "model.depth=3"], "model.depth=3 is not allowed: unset"),
        (["data=blobs", "data.input_shape=null"], "data.input_shape=None is not allowed"),
        (["data=blobs", "data.num_classes=1"], "data.num_classes=1 is not allowed"),
        (["data.num_classes=3"], "data.num_classes=3 is not allowed: null: mnist1d knows"),
        (["data=blobs", "data.download=true"], "data.download=True is not allowed: unset"),
        # declared 4 classes, the target returns 3: found when loading, still before training
        (["data=blobs", "data.num_classes=4"], "expected num_classes=4 as declared, found 3"),
        (["data=blobs", "data.input_shape=[2,9]"], "expected x_train of shape (N, *(2, 9))"),
        (["data=blobs", "data.options.length=-1"], "blobs.gaussian_blobs: RuntimeError"),
        # the model takes the contract but cannot be built with these options
        (
            ["data=blobs", "model=blob_net", "model.options.hidden=-1"],
            "model=blob_net on blobs inputs (2, 8) is not allowed: blobs.BlobNet must build: "
            "RuntimeError",
        ),
    ],
)
def test_a_bad_outside_config_fails_before_training_in_one_line(outside, args, named):
    result = outside(*args, *SIZES)
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and named in lines[0], result.err
    assert result.run_dirs() == []


def test_the_registries_list_the_built_ins_in_order():
    assert data.names() == ("mnist1d", "mnist", "mnist_5k", "fashion_mnist", "cifar10")
    assert models.names() == ("mlp", "cnn1d", "cnn", "resnet20")
    assert data.get("cifar10").input_shape == (3, 32, 32) and data.get("mnist").num_classes == 10


def test_a_name_is_registered_once():
    with pytest.raises(ValueError, match="registered twice"):
        data.register(data.get("mnist1d"))
    with pytest.raises(ValueError, match="registered twice"):
        models.register(models.get("mlp"))
