"""``mabn``: Moving Average Batch Normalization (Yan et al., ICLR 2020, arXiv 2001.06838), as the
authors' reference layer ``MABN2d`` (github.com/megvii-model/MABN, ``MABN.py``, commit 9a18b24)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from normlab.norms import sync
from normlab.norms.base import RunningStatsNorm
from normlab.norms.options import at_least, option, positive
from normlab.norms.registry import Mode, register
from normlab.norms.stats import channel_view, reduction_dims, values_per_channel

R_HOLD_STEPS = 1000  # r is 1 up to step max(R_HOLD_STEPS, warmup_iters), hard-coded as in MABN2d
R_MAX = 5.0  # then clamped to [1 / R_MAX, R_MAX]
SWITCHES = ("sma_forward", "sma_backward", "renorm_r")
NAME = "mabn"


class _MABNNormalize(torch.autograd.Function):
    """``weight * r * x / sqrt(var + eps) + bias`` with MABN's backward.

    With ``z = x / sqrt(var + eps)``, ``g = weight * r * grad_out`` and ``psi = <g * z>`` (the
    mean over the batch and spatial values of a channel)::

        grad_x = (g - z * psi_used) / sqrt(var + eps)

    ``psi_used`` is ``psi`` itself during the batch phase or without ``sma_backward`` (then this is
    the exact gradient of ``z`` with ``var = <x^2>`` and r a constant), otherwise the mean of the
    ``psi`` of the last ``len(psi_window)`` steps, this one's written into row ``slot`` first.
    ``z`` is never stored: ``psi``, the weight gradient and ``grad_x`` are per-channel factors of
    ``<grad_out * x>`` and of ``grad_out`` and ``x``. ``synced_count``: the values per channel of
    the global batch whose slice ``x`` is (``norm.sync``); ``psi`` is then summed over ranks.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, inv_std, r, psi_window, slot, use_batch_psi, synced_count):
        scale = weight * r * inv_std
        ctx.save_for_backward(x, weight, inv_std, r, slot, use_batch_psi)
        ctx.psi_window = psi_window
        ctx.synced_count = synced_count
        return torch.addcmul(channel_view(bias, x), x, channel_view(scale, x))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x, weight, inv_std, r, slot, use_batch_psi = ctx.saved_tensors
        window = ctx.psi_window
        dims = reduction_dims(x)
        grad_dot_x = (grad_out * x).sum(dim=dims)
        r_inv_std = r * inv_std
        psi = weight * r_inv_std * grad_dot_x
        if ctx.synced_count is not None:
            dist.all_reduce(psi)
        psi.div_(ctx.synced_count or values_per_channel(x))
        window.index_copy_(0, slot.view(1), psi.unsqueeze(0))
        psi_used = torch.where(use_batch_psi, psi, window.mean(dim=0))
        grad_x = grad_out * channel_view(weight * r_inv_std, x)
        grad_x.sub_(x * channel_view(inv_std.square() * psi_used, x))
        grad_weight = r_inv_std * grad_dot_x if ctx.needs_input_grad[1] else None
        grad_bias = grad_out.sum(dim=dims) if ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias, None, None, None, None, None, None


class MovingAverageBatchNorm(RunningStatsNorm):
    """Moving Average Batch Normalization, the authors' ``MABN2d`` for ``(N, C)``, ``(N, C, L)``
    and ``(N, C, H, W)`` inputs (statistics over every dim but the channels).

    Training step ``t = 1, 2, ...`` (``num_batches_tracked``, counted before the forward); ``K =
    buffer_size``, ``W = warmup_iters``; ``<.>`` the mean over a channel's values. No mean is
    subtracted anywhere::

        x2_t   = <x^2>, written into row t % K of x2_window
        var    = x2_t                     while t <= K or t < W (the batch phase)
                 mean of x2_window        after: the last K steps' <x^2>, this one's included
        r      = sqrt(var + eps) / sqrt(running_var + eps)   (running_var before this step)
                 held at 1 while t <= max(1000, W), then clamped to [1/5, 5]; constant to autograd
        y      = weight * r * x / sqrt(var + eps) + bias
        running_var <- (1 - momentum) * running_var + momentum * var

    So past step ``max(1000, W)`` an unclamped ``r`` makes the forward ``x / sqrt(running_var +
    eps)``. The backward is :class:`_MABNNormalize`'s, its window of ``psi = <g z>`` switching
    with the same phase. Eval: ``weight * x / sqrt(running_var + eps) + bias``.

    ``momentum`` is normlab's (weight of the new value): the authors' 0.98 is ``momentum = 0.02``,
    the default here; a trainer sets it from the config's ``momentum`` schedule. ``running_var``
    holds the second moment ``<x^2>`` (it starts at 1, as in MABN2d; ``running_mean`` stays 0 and
    is what eval and the diagnostics subtract, nothing). Precise-BN replays the batches' ``<x^2>``
    (:meth:`update_running`). Diagnostics are the base's: the batch mean and variance against
    mean 0 and ``sqrt(running_var + eps)``.

    Ablation switches (all on: the authors' layer): ``sma_forward=False`` normalizes by the batch's
    own ``<x^2>`` at every step (and the EMA absorbs it); ``sma_backward=False`` uses the batch's
    own ``psi`` at every step; ``renorm_r=False`` holds ``r`` at 1 throughout.

    Where the project's specification of MABN was silent, this follows MABN2d: ``r`` is computed
    from the statistic used to normalize (the moving average after the batch phase, not the
    batch's own) and the running variance before this step's update; ``running_var`` is an EMA of
    that same statistic; ``g`` in ``psi`` includes ``weight`` and ``r``; the 1000-step hold on
    ``r`` is a constant, not an option. A training-mode forward without a backward leaves that
    step's ``psi`` row as it was (the row of step ``t - K``), as in MABN2d.
    """

    channel_separable = True  # its (K, C) windows widen along C as the 1-D buffers do
    reads_past_batches = True
    syncable = True

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.02,
        buffer_size: int = 16,
        warmup_iters: int = 100,
        sma_forward: bool = True,
        sma_backward: bool = True,
        renorm_r: bool = True,
    ) -> None:
        super().__init__(num_features, eps, momentum)
        if int(buffer_size) < 1:
            raise ValueError(f"buffer_size must be >= 1, got {buffer_size}")
        if int(warmup_iters) < 0:
            raise ValueError(f"warmup_iters must be >= 0, got {warmup_iters}")
        self.buffer_size = int(buffer_size)
        self.warmup_iters = int(warmup_iters)
        self.sma_forward = bool(sma_forward)
        self.sma_backward = bool(sma_backward)
        self.renorm_r = bool(renorm_r)
        self.register_buffer("x2_window", torch.zeros(self.buffer_size, num_features))
        self.register_buffer("psi_window", torch.zeros(self.buffer_size, num_features))

    def extra_repr(self) -> str:
        switches = ", ".join(f"{name}={getattr(self, name)}" for name in SWITCHES)
        windows = f"buffer_size={self.buffer_size}, warmup_iters={self.warmup_iters}"
        return f"{super().extra_repr()}, {windows}, {switches}"

    def train_forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            x2 = x.square().sum(dim=reduction_dims(x)).div_(values_per_channel(x))
        return self._normalize(x, x2, None)

    def synced_train_forward(self, x: Tensor) -> Tensor:
        """``<x^2>`` and ``psi`` over the global batch; the diagnostics its mean and variance."""
        with torch.no_grad():
            mean, var, count = sync.global_moments(x)
            self._record(mean, var)
        return self._normalize(x, var + mean.square(), count)

    def _normalize(self, x: Tensor, x2: Tensor, synced_count: int | None) -> Tensor:
        with torch.no_grad():
            self.num_batches_tracked += 1
            step = self.num_batches_tracked
            slot = step % self.buffer_size
            self.x2_window.index_copy_(0, slot.view(1), x2.unsqueeze(0))
            batch_phase = (step <= self.buffer_size) | (step < self.warmup_iters)
            var = x2
            if self.sma_forward:
                var = torch.where(batch_phase, x2, self.x2_window.mean(dim=0))
            inv_std = torch.rsqrt(var + self.eps)
            r = self._r(var, step)
            self.running_var.lerp_(var, self.momentum)
        use_batch_psi = batch_phase if self.sma_backward else torch.ones_like(batch_phase)
        return _MABNNormalize.apply(
            x,
            self.weight,
            self.bias,
            inv_std,
            r,
            self.psi_window,
            slot,
            use_batch_psi,
            synced_count,
        )

    def _r(self, var: Tensor, step: Tensor) -> Tensor:
        ones = torch.ones_like(var)
        if not self.renorm_r:
            return ones
        raw = (var + self.eps).sqrt_().div_((self.running_var + self.eps).sqrt())
        held = step <= max(R_HOLD_STEPS, self.warmup_iters)
        return torch.where(held, ones, raw.clamp_(1.0 / R_MAX, R_MAX))

    @torch.no_grad()
    def update_running(self, mean: Tensor, var: Tensor, n: int) -> None:
        """EMA step towards the batch's second moment ``var + mean^2`` (biased ``var``)."""
        self.running_var.lerp_(var + mean.square(), self.momentum)
        self.num_batches_tracked += 1

    @torch.no_grad()
    def set_population_stats(self, mean: Tensor, var: Tensor) -> None:
        self.running_var.copy_(var + mean.square())


@dataclass(frozen=True)
class MABNOptions:
    eps: float = option(1e-5, positive)
    buffer_size: int = option(16, at_least(1))  # MABN2d's real_B // B (32 // 2 in the paper)
    warmup_iters: int = option(100, at_least(0))
    sma_forward: bool = option(True)
    sma_backward: bool = option(True)
    renorm_r: bool = option(True)


def _off(options: MABNOptions) -> list[str]:
    return [name for name in SWITCHES if not getattr(options, name)]


def _label(options: MABNOptions) -> str:
    off = _off(options)
    return f"{NAME} (without {', '.join(off)})" if off else NAME


def _tags(options: MABNOptions) -> list[str]:
    return [f"buffer_size:{options.buffer_size}"] + [f"no_{name}" for name in _off(options)]


MODE = register(
    Mode(
        name=NAME,
        layer=MovingAverageBatchNorm,
        options=MABNOptions,
        label=_label,
        tags=_tags,
    )
)
