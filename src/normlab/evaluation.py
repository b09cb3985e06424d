"""What a logged row measures with forward passes: each held-out set with population
statistics (eval mode) and with the forward as trained (train mode), their gap and KL, and
optionally precisely recomputed population statistics.

Train mode on a set means: the set cut into batches of the run's batch size and sampler, and
each batch given the forward of the *next training step*, from the trained state (every buffer
restored afterwards, none carried from one evaluation batch to the next). Batches are then
independent, so with per-channel layers (``channel_separable``) all batches of a chunk run as
one forward: batch ``g``'s channel ``c`` becomes channel ``g * C + c`` of a norm layer widened
``G`` times (its per-channel parameters and buffers repeated). Layers of other kinds run batch
by batch, with the state restored before each. Both give the same numbers; the first costs a
few whole-tensor passes instead of one small forward per batch (at batch size 1, a thousand).
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import chain, islice

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normlab.metrics import accuracy, gap_metrics
from normlab.models import forward_activations
from normlab.norms import RunningStatsNorm, is_batch_independent, norm_layers
from normlab.precise_bn import recompute_population_stats

# On CPU a forward of more activations than this spills out of the caches: the MNIST CNN's
# 1,000 validation images in eval mode took 4x as long in one forward as in chunks of 32-64
# (docs/benchmarks.md).
CPU_FORWARD_ACTIVATIONS = 4_000_000


class Evaluator:
    """The held-out sets of a run and their metrics.

    ``sets`` maps a name (``val``, ``train_subset``) to inputs, labels and the train-mode
    batches (index tensors of the run's batch size); ``layers`` are the model's norm layers.
    A forward takes ``eval_batch_size`` rows, on CPU fewer where that many would hold more
    than ``CPU_FORWARD_ACTIVATIONS`` values (each row's outputs are the same either way).
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[nn.Module],
        sets: dict[str, tuple[Tensor, Tensor, list[Tensor]]],
        eval_batch_size: int,
    ) -> None:
        self.model, self.sets, self.eval_batch_size = model, sets, eval_batch_size
        self.stackable = all(_stackable(layer) for layer in layers)
        history = any(getattr(layer, "reads_past_batches", False) for layer in layers)
        self.precise_stackable = self.stackable and not history
        self._rows: int | None = None

    def rows_per_forward(self, x: Tensor) -> int:
        """How many rows of ``x`` one evaluation forward takes (counted on the first call)."""
        if self._rows is None:
            self._rows = self.eval_batch_size
            if x.device.type == "cpu":
                with preserved_state(self.model):
                    self.model.eval()
                    per_row = max(1, forward_activations(self.model, x[:1]))
                self._rows = min(self._rows, max(1, CPU_FORWARD_ACTIVATIONS // per_row))
        return self._rows

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        row: dict[str, float] = {}
        for name, (x, y, batches) in self.sets.items():
            logits_eval = self.eval_logits(x)
            row[f"{name}_acc_eval"] = accuracy(logits_eval, y)
            row[f"{name}_loss"] = F.cross_entropy(logits_eval, y).item()
            if batches:
                index = torch.cat(batches)
                logits_train = self.train_mode_logits(x[index], len(batches[0]))
                pair = gap_metrics(logits_train, logits_eval[index], y[index])
                row[f"{name}_acc_train_mode"] = pair["acc_train_mode"]
                row[f"{name}_gap_train_minus_eval"] = pair["gap_train_minus_eval"]
                row[f"{name}_kl_train_eval"] = pair["kl_train_eval"]
        row["gap_train_minus_eval"] = row.pop("val_gap_train_minus_eval", float("nan"))
        row["kl_train_eval"] = row.pop("val_kl_train_eval", float("nan"))
        row["train_minus_val_acc_eval"] = row["train_subset_acc_eval"] - row["val_acc_eval"]
        return row

    def eval_logits(self, x: Tensor) -> Tensor:
        size = self.rows_per_forward(x)
        self.model.eval()
        return torch.cat([self.model(x[i : i + size]) for i in range(0, len(x), size)])

    def train_mode_logits(self, x: Tensor, batch_size: int) -> Tensor:
        """The forward as trained of each consecutive ``batch_size`` rows of ``x``, every batch
        from the trained state; buffers and switches are as before afterwards."""
        groups = max(1, self.rows_per_forward(x) // batch_size)
        chunks = [x[i : i + groups * batch_size] for i in range(0, len(x), groups * batch_size)]
        with preserved_state(self.model):
            self.model.train()
            if self.stackable:
                return torch.cat([self._stacked(chunk, batch_size) for chunk in chunks])
            return torch.cat([self._one_by_one(chunk, batch_size) for chunk in chunks])

    def _stacked(self, x: Tensor, batch_size: int) -> Tensor:
        with widened_norms(self.model, len(x) // batch_size):
            return self.model(x)

    def _one_by_one(self, x: Tensor, batch_size: int) -> Tensor:
        trained = {name: b.clone() for name, b in self.model.named_buffers()}
        outputs = []
        for batch in x.split(batch_size):
            _restore(self.model, trained)
            outputs.append(self.model(batch))
        return torch.cat(outputs)

    @torch.no_grad()
    def precise(self, batches: Callable[[], Iterator[Tensor]], x: Tensor, y: Tensor) -> dict:
        """Accuracy with population statistics recomputed exactly over ``batches()`` (fvcore's
        PreciseBN), the model as it was afterwards."""
        started = time.perf_counter()
        with preserved_state(self.model):
            recompute_population_stats(self.model, *self._precise_forwards(batches(), x))
            logits = self.eval_logits(x)
        return {
            "val_acc_precise": accuracy(logits, y),
            "val_loss_precise": F.cross_entropy(logits, y).item(),
            "precise_seconds": time.perf_counter() - started,
        }

    def _precise_forwards(self, batches: Iterator[Tensor], x: Tensor) -> tuple[Iterable, Callable]:
        """The precise statistics' batches and forward: with per-channel layers that read no
        earlier batch, as many batches stacked in one forward as :meth:`train_mode_logits`
        stacks."""
        if not self.precise_stackable:
            return batches, self.model
        first = next(batches, None)  # its length is the batch size
        if first is None:
            return [], self.model
        groups = max(1, self.rows_per_forward(x) // len(first))
        stacked = (torch.cat(group) for group in _batched(chain([first], batches), groups))
        return stacked, lambda chunk: self._stacked(chunk, len(first))


def _stackable(layer: nn.Module) -> bool:
    if isinstance(layer, RunningStatsNorm):
        return type(layer).channel_separable
    return is_batch_independent(layer)


def _batched(items: Iterable[Tensor], size: int) -> Iterator[list[Tensor]]:
    """Consecutive lists of ``size`` items (the last one shorter)."""
    items = iter(items)
    while group := list(islice(items, size)):
        yield group


@contextlib.contextmanager
def preserved_state(model: nn.Module) -> Iterator[None]:
    """Every buffer, the train/eval flag and the norm layers' diagnostics switches restored on
    exit; diagnostics off meanwhile (evaluation is not a training step)."""
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    layers = norm_layers(model)
    tracking = {name: layer.track_diagnostics for name, layer in layers.items()}
    was_training = model.training
    for layer in layers.values():
        layer.track_diagnostics = False
    try:
        yield
    finally:
        _restore(model, buffers)
        for name, layer in layers.items():
            layer.track_diagnostics = tracking[name]
        model.train(was_training)


def _restore(model: nn.Module, buffers: dict[str, Tensor]) -> None:
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            buffer.copy_(buffers[name])


class _Widened(nn.Module):
    """A norm layer over ``groups`` independent batches stacked along the channel dim."""

    def __init__(self, layer: RunningStatsNorm, groups: int) -> None:
        super().__init__()
        self.groups = groups
        self.layer = copy.deepcopy(layer)
        channels = layer.num_features
        with torch.no_grad():
            for name, param in list(self.layer.named_parameters(recurse=False)):
                setattr(self.layer, name, nn.Parameter(param.repeat(groups), requires_grad=False))
            for name, buffer in list(self.layer.named_buffers(recurse=False)):
                if buffer.dim() and buffer.shape[-1] == channels:  # per channel, or windows of it
                    self.layer._buffers[name] = buffer.repeat(*[1] * (buffer.dim() - 1), groups)
        self.layer.num_features = channels * groups
        self.layer.track_diagnostics = False

    def forward(self, x: Tensor) -> Tensor:
        groups, channels, rest = self.groups, x.shape[1], x.shape[2:]
        per_batch = x.shape[0] // groups
        stacked = x.view(groups, per_batch, channels, *rest).transpose(0, 1)
        y = self.layer(stacked.reshape(per_batch, groups * channels, *rest))
        return y.view(per_batch, groups, channels, *rest).transpose(0, 1).reshape(x.shape)


@contextlib.contextmanager
def widened_norms(model: nn.Module, groups: int) -> Iterator[None]:
    """Every running-statistics layer of ``model`` replaced by its :class:`_Widened` copy."""
    swapped = []
    for name, layer in norm_layers(model).items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, _Widened(layer, groups))
        swapped.append((parent, child, layer))
    try:
        yield
    finally:
        for parent, child, layer in swapped:
            setattr(parent, child, layer)
