"""Precise population statistics (fvcore's PreciseBN; Wu & Johnson 2021, arXiv 2105.07576).

The moving averages a layer keeps are an estimate of the population statistics, lagging behind
the weights and noisy at small momentum horizons. Recomputing them exactly, with the final
weights, over many training batches separates "the EMA is a poor estimate" from "batch-statistics
training differs from population-statistics inference".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from itertools import repeat

import torch
from torch import Tensor, nn

from normlab.norms import batch_stats, norm_layers, values_per_channel


@torch.no_grad()
def recompute_population_stats(
    model: nn.Module, batches: Iterable[Tensor], forward: Callable[[Tensor], Tensor] | None = None
) -> int:
    """Replace every batch-dependent norm layer's moving averages by exact averages over
    ``batches``, of the same quantities the averages track.

    ``model`` runs its training-mode forward on each batch with the running stats held at their
    current values, and each layer's input statistics are recorded. The layer's own running
    update is then replayed over the recorded batches with momentum ``1/(k+1)``, which turns its
    exponential average into the plain mean with equal weight per batch: the mean and unbiased
    variance for ``batch``/``moving_average``, the mean and ``sigma_B = sqrt(var_B + eps)`` for
    ``renorm`` (whose inference divides by the average batch standard deviation it trained
    against), the second moment ``<x^2>`` for ``mabn``. Nothing else of the model changes:
    parameters are never touched, and the other buffers, momentum, the train/eval flag and
    diagnostics switches are restored. Returns the number of batches used.

    ``forward`` may run several batches as one (stacked along the channels of widened copies
    of the layers, :mod:`normlab.evaluation`): a layer's input of ``G`` times its channels is
    recorded as ``G`` batches, batch ``g`` its channels ``g * C`` to ``(g + 1) * C``.
    """
    layers = norm_layers(model)
    records: dict[str, list[tuple[Tensor, Tensor, int]]] = {name: [] for name in layers}
    saved = _freeze(layers)
    # a widened copy of a layer (copy.deepcopy) carries these hooks, and records into the same list
    handles = [
        layer.register_forward_pre_hook(_recorder(records[name], layer.num_features))
        for name, layer in layers.items()
    ]
    was_training = model.training
    model.train()
    try:
        for batch in batches:
            (forward or model)(batch)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
        _thaw(layers, saved)
    for name, layer in layers.items():
        _replay_as_exact_average(layer, records[name])
    return min((len(r) for r in records.values()), default=0)


def _recorder(records: list[tuple[Tensor, Tensor, int]], channels: int) -> Callable:
    def hook(module: nn.Module, args: tuple[Tensor, ...]) -> None:
        x = args[0]
        count = values_per_channel(x)
        mean, var = batch_stats(x)
        records.extend(zip(mean.split(channels), var.split(channels), repeat(count), strict=False))

    return hook


def _replay_as_exact_average(layer: nn.Module, records: list[tuple[Tensor, Tensor, int]]) -> None:
    """Cumulative momentum 1/(k+1) makes the layer's EMA update an exact running mean; with one
    value per channel the update leaves the variance as it was, as in training."""
    if not records:
        return
    momentum, tracked = layer.momentum, layer.num_batches_tracked.clone()
    for k, (mean, var, n) in enumerate(records):
        layer.momentum = 1.0 / (k + 1)
        layer.update_running(mean, var, n)
    layer.momentum = momentum
    layer.num_batches_tracked.copy_(tracked)


def _freeze(layers: dict[str, nn.Module]) -> dict[str, tuple]:
    """Hold the layers' running stats fixed during the passes (momentum 0, so layers that
    normalize with them see the values they were trained with); remember how they were."""
    saved = {}
    for name, layer in layers.items():
        saved[name] = (
            {k: b.clone() for k, b in layer.named_buffers(recurse=False)},
            layer.track_diagnostics,
            layer.momentum,
        )
        layer.track_diagnostics = False
        layer.momentum = 0.0
    return saved


def _thaw(layers: dict[str, nn.Module], saved: dict[str, tuple]) -> None:
    for name, layer in layers.items():
        buffers, track, momentum = saved[name]
        for key, value in buffers.items():
            getattr(layer, key).copy_(value)
        layer.track_diagnostics, layer.momentum = track, momentum
