"""Precise population statistics (fvcore's PreciseBN; Wu & Johnson 2021, arXiv 2105.07576).

The moving averages a layer keeps are an estimate of the population statistics, lagging behind
the weights and noisy at small momentum horizons. Recomputing them exactly, with the final
weights, over many training batches separates "the EMA is a poor estimate" from "batch-statistics
training differs from population-statistics inference".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from normlab.norm import batch_stats, norm_layers, unbiased, values_per_channel


@torch.no_grad()
def recompute_population_stats(
    model: nn.Module, batches: Iterable[Tensor], forward: Callable[[Tensor], Tensor] | None = None
) -> int:
    """Set every batch-dependent norm layer's population stats to exact averages over ``batches``.

    ``model`` runs its training-mode forward on each batch, with the running stats held at their
    current values; each layer's input mean and unbiased variance are averaged with equal weight
    per batch (what the EMA estimates, without its lag). Nothing else of the model changes:
    parameters are never touched, and buffers, momentum, the train/eval flag and diagnostics
    switches are restored. Returns the number of batches used. Layers that saw no batch with
    more than one value per channel keep their previous variance.
    """
    layers = norm_layers(model)
    sums: dict[str, list] = {name: [0.0, 0.0, 0] for name in layers}
    saved = _freeze(layers)
    handles = [
        layer.register_forward_pre_hook(_accumulator(sums[name])) for name, layer in layers.items()
    ]
    was_training = model.training
    model.train()
    count = 0
    try:
        for batch in batches:
            (forward or model)(batch)
            count += 1
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
        _thaw(layers, saved)
    for name, layer in layers.items():
        mean_sum, var_sum, var_count = sums[name]
        if count:
            mean = mean_sum / count
            var = var_sum / var_count if var_count else layer.population_stats()[1]
            layer.set_population_stats(mean, var)
    return count


def _accumulator(totals: list) -> Callable:
    def hook(module: nn.Module, args: tuple[Tensor, ...]) -> None:
        x = args[0]
        mean, var = batch_stats(x)
        n = values_per_channel(x)
        totals[0] = totals[0] + mean
        if n > 1:
            totals[1] = totals[1] + unbiased(var, n)
            totals[2] += 1

    return hook


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
