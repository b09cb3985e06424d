"""The evaluation's forwards: eval-mode logits in chunks and train-mode logits of stacked
batches equal plain forwards of a copy of the model, batch by batch (the reference)."""

from __future__ import annotations

import copy

import pytest
import torch

from normlab import evaluation
from normlab.evaluation import Evaluator
from normlab.models import build_model, forward_activations
from normlab.norms import norm_layers, registry
from normlab.precise_bn import recompute_population_stats

# mabn past its batch phase (a window of 2 steps, no warm-up): its forward reads the window
MODES = ("batch", "moving_average", "renorm", "online", "mabn", "mabn windowed", "group")
OPTIONS = {"group": {"groups": 4}, "mabn windowed": {"buffer_size": 2, "warmup_iters": 0}}


def _trained_model(mode: str, model: str = "cnn1d") -> torch.nn.Module:
    """A small model whose running statistics have moved from their initial values."""
    torch.manual_seed(0)
    choice = registry.choose({"mode": mode.split()[0], **OPTIONS.get(mode, {})})
    net = build_model(model, (1, 40), 10, choice.build, depth=2, width=8)
    net.train()
    with torch.no_grad():
        for _ in range(5):
            net(torch.randn(4, 1, 40) * 2 + 1)
    return net


def _evaluator(net: torch.nn.Module, x, batches, eval_batch_size: int) -> Evaluator:
    y = torch.zeros(len(x), dtype=torch.long)
    layers = list(norm_layers(net).values())
    return Evaluator(net, layers, {"val": (x, y, batches)}, eval_batch_size)


# the cnn1d below outputs 1,450 values a row: the whole set in one forward, 8 rows (two batches)
# a forward, one row (each batch alone)
BUDGETS = [None, 8 * 1450, 600]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("budget", BUDGETS)
def test_train_mode_logits_are_each_batchs_forward_from_the_trained_state(
    mode, budget, monkeypatch
):
    """Every batch of 4 gets the train-mode forward of a fresh copy of the trained model, with
    the model's forward in one piece (budget None: 12 batches a forward) or chunked under a
    small activations budget; the model's buffers are untouched afterwards."""
    if budget is not None:
        monkeypatch.setattr(evaluation, "CPU_FORWARD_ACTIVATIONS", budget)
    net = _trained_model(mode)
    x = torch.randn(48, 1, 40)
    batches = list(torch.randperm(48).split(4))
    before = {name: b.clone() for name, b in net.named_buffers()}
    index = torch.cat(batches)
    ours = _evaluator(net, x, batches, 1000).train_mode_logits(x[index], 4)
    reference = []
    for batch in batches:
        fresh = copy.deepcopy(net).train()
        with torch.no_grad():
            reference.append(fresh(x[batch]))
    torch.testing.assert_close(ours, torch.cat(reference), rtol=1e-5, atol=1e-5)
    for name, buffer in net.named_buffers():
        torch.testing.assert_close(buffer, before[name], rtol=0, atol=0)


@pytest.mark.parametrize("budget", BUDGETS)
def test_eval_logits_are_the_eval_mode_forward_of_every_row(budget, monkeypatch):
    if budget is not None:
        monkeypatch.setattr(evaluation, "CPU_FORWARD_ACTIVATIONS", budget)
    net = _trained_model("batch")
    x = torch.randn(50, 1, 40)
    ours = _evaluator(net, x, [], 16).eval_logits(x)
    reference = copy.deepcopy(net).eval()
    with torch.no_grad():
        torch.testing.assert_close(ours, reference(x), rtol=1e-5, atol=1e-5)


def test_a_cpu_forward_takes_as_many_rows_as_the_activations_budget_allows(monkeypatch):
    """Hand count for the MLP of depth 2 and width 16: each hidden layer outputs 16 values from
    its linear layer, its norm and its ReLU, the head 10: 106 a row. A budget of 1,000 values
    fits 9 rows; one of a million is past eval_batch_size (32), which then holds."""
    torch.manual_seed(0)
    choice = registry.choose({"mode": "batch"})
    net = build_model("mlp", (40,), 10, choice.build, depth=2, width=16)
    x = torch.randn(64, 40)
    monkeypatch.setattr(evaluation, "CPU_FORWARD_ACTIVATIONS", 1000)
    assert _evaluator(net, x, [], 32).rows_per_forward(x) == 1000 // 106
    monkeypatch.setattr(evaluation, "CPU_FORWARD_ACTIVATIONS", 10**6)
    assert _evaluator(net, x, [], 32).rows_per_forward(x) == 32


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("budget", BUDGETS)
def test_precise_statistics_of_stacked_batches_are_those_of_one_batch_at_a_time(
    mode, budget, monkeypatch
):
    """Seven batches of 4, stacked as the budget allows (all of them, two a forward with the
    last alone, or one), give the accuracy and loss of statistics recomputed batch by batch
    (tests/test_precise_bn.py checks those against a hand computation). MABN's windows roll
    through the batches of the pass, so its batches go one at a time."""
    if budget is not None:
        monkeypatch.setattr(evaluation, "CPU_FORWARD_ACTIVATIONS", budget)
    net = _trained_model(mode)
    x, y = torch.randn(40, 1, 40), torch.randint(0, 10, (40,))
    data = [torch.randn(4, 1, 40) * 1.5 + 0.5 for _ in range(7)]
    reference = copy.deepcopy(net)
    assert recompute_population_stats(reference, data) == (0 if mode == "group" else 7)
    with torch.no_grad():
        logits = reference.eval()(x)
    ours = _evaluator(net, x, [], 1000).precise(lambda: iter(data), x, y)
    expected = torch.nn.functional.cross_entropy(logits, y).item()
    assert ours["val_loss_precise"] == pytest.approx(expected, rel=1e-5)
    assert ours["val_acc_precise"] == (logits.argmax(1) == y).float().mean().item()


class _PairOut(torch.nn.Module):
    """A user's leaf layer that returns a tuple: its output and a per-row scale."""

    def forward(self, x):
        return x * 2, x.sum(dim=1)


class _WithPair(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear, self.pair = torch.nn.Linear(6, 4), _PairOut()

    def forward(self, x):
        out, scale = self.pair(self.linear(x))
        return out * scale.unsqueeze(1)


def test_a_leaf_that_returns_a_tuple_counts_its_tensors():
    """Hand count for one row: the linear layer's 4 values, the pair's 4 + 1."""
    assert forward_activations(_WithPair(), torch.randn(1, 6)) == 4 + 4 + 1
