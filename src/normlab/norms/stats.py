"""Per-channel batch statistics and the two normalizations every running-statistics mode is
built from: with the batch's own statistics (gradient through them) and with constants.

A channel's statistics average over the batch and every spatial dim of an ``(N, C)`` or
``(N, C, *spatial)`` input, so a channel has ``N * prod(spatial)`` values
(:func:`values_per_channel`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def reduction_dims(x: Tensor) -> list[int]:
    """The dims a per-channel statistic averages over: batch and every spatial dim."""
    if x.dim() < 2:
        raise ValueError(
            f"expected an (N, C) or (N, C, *spatial) input, got shape {tuple(x.shape)}"
        )
    return [0, *range(2, x.dim())]


def values_per_channel(x: Tensor) -> int:
    return x.numel() // x.shape[1]


def batch_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and biased variance of ``x``, outside autograd.

    On CPU with spatial dims, two passes (the mean, then the squared deviations from it, so no
    ``E[x^2] - E[x]^2`` cancellation): the fused native kernel reduces an NCHW tensor over
    (N, H, W) several times slower. Elsewhere (``(N, C)`` inputs, CUDA) the fused native kernel
    is the faster one.
    """
    with torch.no_grad():
        if x.dim() > 2 and x.device.type == "cpu":
            mean, var, _ = stats_keeping_centered(x)
            return mean, var
        return torch.batch_norm_update_stats(x, None, None, 0.0)


def stats_keeping_centered(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Mean, biased variance and ``x - mean`` (for reuse as an output buffer), in two passes."""
    n, c = x.shape[:2]
    count = values_per_channel(x)
    mean = x.sum(dim=reduction_dims(x)).div_(count)
    centered = x - channel_view(mean, x)
    if centered.is_contiguous():
        # norms of the (sample, channel) rows: no full-size temporary for the squares
        row_norms = torch.linalg.vector_norm(centered.view(n * c, -1), dim=1)
        var = row_norms.square_().view(n, c).sum(dim=0)
    else:
        var = centered.square().sum(dim=reduction_dims(x))
    return mean, var.div_(count), centered


def unbiased(var: Tensor, n: int) -> Tensor:
    return var * (n / (n - 1))


def channel_view(t: Tensor, x: Tensor) -> Tensor:
    """``t`` (C,) as ``(C, 1, ..., 1)``, to broadcast against ``x`` per channel.

    No leading batch dim, on purpose: with a ``(1, C, 1, ...)`` view and an input with one value
    per channel, the gradient of a parameter passed through it would be a view of the caller's
    ``grad_out``, which autograd keeps as ``.grad`` and later accumulates into in place,
    overwriting the caller's tensor. Broadcasting over N makes that gradient a fresh sum.
    """
    return t.view(-1, *([1] * (x.dim() - 2)))


class _NormalizeWithBatchStats(torch.autograd.Function):
    """``weight * (x - mean) * invstd + bias`` where ``mean``/``var`` are ``x``'s own batch stats.

    The stats come in precomputed (they are needed earlier, e.g. for batch renormalization's r
    and d), so the forward is one elementwise pass of the native kernel, and the backward is
    PyTorch's own training-mode batch-norm backward: the gradient flows through the batch
    statistics exactly as in ``F.batch_norm(training=True)``. Works with one value per
    channel, where the native training forward refuses.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, mean, var, eps, centered):
        invstd = torch.rsqrt(var + eps)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.eps = eps
        if centered is None:
            return F.batch_norm(x, mean, var, weight, bias, False, 0.0, eps)
        # x - mean, already computed for the variance, becomes the output: no new buffer
        ctx.mark_dirty(centered)
        gain = weight * invstd
        return centered.mul_(channel_view(gain, x)).add_(channel_view(bias, x))

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, mean, invstd = ctx.saved_tensors
        grad_x, grad_w, grad_b = torch.ops.aten.native_batch_norm_backward(
            grad_out.contiguous(),
            x,
            weight,
            None,
            None,
            mean,
            invstd,
            True,
            ctx.eps,
            list(ctx.needs_input_grad[:3]),
        )
        return grad_x, grad_w, grad_b, None, None, None, None


def normalize_with_batch_stats(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    mean: Tensor,
    var: Tensor,
    eps: float,
    centered: Tensor | None = None,
) -> Tensor:
    """Training-mode batch norm of ``x`` given its own (biased) batch statistics.

    ``centered``, if given, is ``x - mean`` computed outside autograd; it is overwritten with
    the output (one full-size buffer fewer: on CPU each fresh one costs page faults).
    """
    if values_per_channel(x) > 1 and (x.dim() == 2 or x.device.type != "cpu"):
        # recomputing the statistics is cheap here, and the native op's autograd node is C++
        # (a Python Function costs tens of microseconds, more than the whole op on (N, C))
        return F.batch_norm(x, None, None, weight, bias, True, 0.0, eps)
    return _NormalizeWithBatchStats.apply(x, weight, bias, mean, var, eps, centered)


def normalize_with_constant_stats(
    x: Tensor, weight: Tensor, bias: Tensor, mean: Tensor, var: Tensor, eps: float
) -> Tensor:
    """Eval-mode batch norm, ``weight * (x - mean) / sqrt(var + eps) + bias`` with ``mean``/``var``
    constants to autograd. They are copied (two C-sized copies), so callers may update those
    buffers in place before backward."""
    return F.batch_norm(x, mean.clone(), var.clone(), weight, bias, False, 0.0, eps)
