"""Synchronized batch statistics: a channel's mean and variance over every rank's slice of the
batch, differentiable, so that the forward and the backward are those of the global batch.

Each rank computes its slice's count, mean and sum of squared deviations (``M2``); the ranks'
rows are gathered (:class:`_GatherRows`, one collective per layer and step) and combined with
Chan et al.'s parallel formula (:func:`combine`, "Updating formulae and a pairwise algorithm for
computing sample variances", 1979) in its many-part form: exact for unequal counts, a rank with
an empty slice contributing nothing, and no ``E[x^2] - E[x]^2`` cancellation. The gather's
backward sums every rank's gradient for a row into its owner, so each rank's input gradient
holds the terms that reach it through the global statistics from every other rank's loss.

Works on any backend with ``all_gather`` and ``all_reduce`` (gloo on CPU, NCCL on CUDA); the
layers take this pure-PyTorch path, never their compiled CPU step, when synchronized.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from normlab.norms.stats import channel_view, reduction_dims


class _GatherRows(torch.autograd.Function):
    """Every rank's ``row`` stacked as ``(world_size, K)``; the backward hands each rank the
    sum over ranks of the gradient of its own row."""

    @staticmethod
    def forward(ctx, row: Tensor) -> Tensor:
        rows = [torch.empty_like(row) for _ in range(dist.get_world_size())]
        dist.all_gather(rows, row.contiguous())
        return torch.stack(rows)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[dist.get_rank()]


def combine(counts: Tensor, means: Tensor, m2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The count, mean and ``M2`` of the union of parts given per part as rows: ``counts``
    ``(R,)``, ``means`` and ``m2`` ``(R, C)``. An empty part has count 0 (its mean and M2 are
    ignored); the union must not be empty.

    ``mean = sum_r n_r mean_r / N`` and ``M2 = sum_r M2_r + sum_r n_r (mean_r - mean)^2``: Chan
    et al.'s pairwise update applied to all parts at once.
    """
    total = counts.sum()
    weights = (counts / total).unsqueeze(1)
    mean = (weights * means).sum(dim=0)
    spread = (counts.unsqueeze(1) * (means - mean).square()).sum(dim=0)
    return total, mean, m2.sum(dim=0) + spread


def local_moments(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """This slice's count (a float tensor), per-channel mean and ``M2``, differentiable; an
    empty slice gives zeros."""
    count = x.numel() // x.shape[1]
    dims = reduction_dims(x)
    if count == 0:
        zeros = x.new_zeros(x.shape[1]) + 0 * x.sum(dim=dims)  # keeps the graph to x
        return x.new_tensor(0.0), zeros, zeros
    mean = x.sum(dim=dims) / count
    m2 = (x - channel_view(mean, x)).square().sum(dim=dims)
    return x.new_tensor(float(count)), mean, m2


def global_moments(x: Tensor) -> tuple[Tensor, Tensor, int]:
    """Per-channel mean and biased variance of the batch every rank's ``x`` is a slice of, and
    its number of values per channel; differentiable with respect to every rank's ``x``."""
    count, mean, m2 = local_moments(x)
    rows = _GatherRows.apply(torch.cat((count.view(1), mean, m2)))
    channels = x.shape[1]
    counts = rows[:, 0].detach()
    total, mean, m2 = combine(counts, rows[:, 1 : 1 + channels], rows[:, 1 + channels :])
    return mean, m2 / total, int(total.item())


def normalize(x: Tensor, weight: Tensor, bias: Tensor, mean: Tensor, var: Tensor, eps: float):
    """``weight * (x - mean) / sqrt(var + eps) + bias``, differentiable in every argument."""
    scale = weight * torch.rsqrt(var + eps)
    return x * channel_view(scale, x) + channel_view(bias - mean * scale, x)
