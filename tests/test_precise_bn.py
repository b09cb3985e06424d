"""Precise population statistics against averages computed by hand, and without side effects."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch import nn

from normlab.norms import build_norm
from normlab.precise_bn import recompute_population_stats


@pytest.fixture
def _float64():
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def two_layer(mode: str) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(4, 3), build_norm(mode, 3), nn.ReLU(), nn.Linear(3, 2), build_norm(mode, 2)
    )


def batches(count: int = 5, size: int = 6) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(size, 4, generator=g) * 3 + 1 for _ in range(count)]


def hand_stats(model: nn.Sequential, data: list[torch.Tensor], second_norm_uses_ema: bool):
    """Per-batch input mean / unbiased variance of both norm layers, averaged with equal weight."""
    lin1, norm1, _, lin2, _ = model
    first, second = [], []
    for x in data:
        h = lin1(x)
        first.append((h.mean(0), h.var(0, correction=1)))
        if second_norm_uses_ema:
            mean, var = norm1.running_mean, norm1.running_var
        else:
            mean, var = h.mean(0), h.var(0, correction=0)
        z = lin2(torch.relu((h - mean) / torch.sqrt(var + norm1.eps) * norm1.weight + norm1.bias))
        second.append((z.mean(0), z.var(0, correction=1)))
    average = lambda pairs: [torch.stack(p).mean(0) for p in zip(*pairs, strict=True)]  # noqa: E731
    return average(first), average(second)


def assert_population_stats(model, expected):
    """The two norm layers' (running mean, running var) against the hand-computed pairs."""
    for layer, (mean, var) in zip((model[1], model[4]), expected, strict=True):
        torch.testing.assert_close(layer.running_mean, mean)
        torch.testing.assert_close(layer.running_var, var)


@pytest.mark.usefixtures("_float64")
@torch.no_grad()
def test_batch_mode_stats_are_exact_averages_over_the_batches():
    model = two_layer("batch")
    data = batches()
    expected = hand_stats(model, data, second_norm_uses_ema=False)
    assert recompute_population_stats(model, data) == 5
    assert_population_stats(model, expected)


@pytest.mark.usefixtures("_float64")
@torch.no_grad()
def test_moving_average_layers_keep_normalizing_with_their_trained_statistics():
    model = two_layer("moving_average")
    model[1].running_mean.fill_(0.5)
    model[1].running_var.fill_(4.0)
    data = batches()
    expected = hand_stats(model, data, second_norm_uses_ema=True)
    recompute_population_stats(model, data)
    assert_population_stats(model, expected)


@pytest.mark.usefixtures("_float64")
@torch.no_grad()
def test_renorm_averages_the_batch_standard_deviation_it_trains_against():
    model = two_layer("renorm")  # rmax = 1, dmax = 0: the forward is batch norm's
    data = batches()
    recompute_population_stats(model, data)
    inputs = [model[0](x) for x in data]
    expected_std = torch.stack(
        [torch.sqrt(h.var(0, correction=0) + model[1].eps) for h in inputs]
    ).mean(0)
    torch.testing.assert_close(model[1].running_mean, torch.stack(inputs).mean((0, 1)))
    torch.testing.assert_close(model[1].running_std, expected_std)


@pytest.mark.usefixtures("_float64")
@torch.no_grad()
def test_nothing_but_population_stats_changes():
    model = two_layer("batch")
    model.eval()
    params = [p.clone() for p in model.parameters()]
    for layer in (model[1], model[4]):
        layer.momentum, layer.track_diagnostics = 0.3, True
    tracked = model[1].num_batches_tracked.clone()
    recompute_population_stats(model, batches())
    assert not model.training
    assert all(torch.equal(a, b) for a, b in zip(params, model.parameters(), strict=True))
    assert model[1].momentum == 0.3 and model[1].track_diagnostics
    assert torch.equal(model[1].num_batches_tracked, tracked)
    assert model[1].diagnostics.collect() == {}, "the passes leave no diagnostics behind"


@pytest.mark.slow
def test_precise_evaluation_is_logged_and_leaves_training_untouched(cli, tmp_path):
    args = ("norm=moving_average", "batch_size=8", "steps=40", "eval_every=20")
    plain = cli(*args, results=tmp_path / "plain")
    precise = cli(
        *args, "eval.precise_bn=true", "eval.precise_batches=5", results=tmp_path / "precise"
    )
    a = pd.read_csv(plain.run_dirs()[0] / "metrics.csv")
    b = pd.read_csv(precise.run_dirs()[0] / "metrics.csv")
    for column in ("loss", "val_acc_eval", "val_acc_train_mode", "param_norm", "mean_shift"):
        pd.testing.assert_series_equal(a[column], b[column])
    assert b["val_acc_precise"].between(0, 1).all()
    assert (b["precise_seconds"] > 0).all()


def test_precise_statistics_over_a_number_of_examples_at_the_last_row_only(cli, monkeypatch):
    from normlab import evaluation

    counted = []

    def counting(model, batches, forward=None):
        batches = list(batches)  # stacked: one forward's input may hold several batches
        used = recompute_population_stats(model, batches, forward)
        counted.append((used, sum(len(b) for b in batches)))
        return used

    monkeypatch.setattr(evaluation, "recompute_population_stats", counting)
    result = cli(
        "norm=batch",
        "batch_size=8",
        "steps=20",
        "eval_every=10",
        "eval.precise_bn=true",
        "eval.precise_examples=44",
        "eval.precise_last_only=true",
    )
    assert result.code == 0, result.err
    metrics = pd.read_csv(result.run_dirs()[0] / "metrics.csv")
    assert metrics["val_acc_precise"].isna().tolist() == [True, True, False]
    assert counted == [(6, 48)], "ceil(44 / 8) = 6 batches of 8, once"
