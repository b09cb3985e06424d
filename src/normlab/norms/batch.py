"""``batch``: standard batch normalization, and ghost batch norm through ``virtual_batch_size``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from normlab.errors import ConfigError
from normlab.norms import kernels, sync
from normlab.norms.base import RunningStatsNorm
from normlab.norms.options import RunFacts, at_least, option, optional, positive
from normlab.norms.registry import Mode, register
from normlab.norms.stats import (
    batch_stats,
    channel_view,
    normalize_with_batch_stats,
    values_per_channel,
)


class BatchNorm(RunningStatsNorm):
    """Standard batch normalization (Ioffe & Szegedy 2015, Algorithm 1).

    Train: normalize with the batch mean and biased variance; gradients flow through them. The
    running buffers follow ``torch.nn.BatchNorm`` (unbiased variance). Eval: running stats.

    Batch size 1 on ``(1, C)`` never raises: one value per channel makes ``x - mu_B`` exactly 0,
    so the layer outputs ``bias`` whatever the input and no gradient reaches the input (the
    "every example turns to zero" failure, shown rather than hidden).

    ``virtual_batch_size`` (ghost batch norm, Hoffer et al. 2017, arXiv 1705.08741): the batch
    is split into consecutive sub-batches of that size, each normalized with its own statistics
    (and gradients through them), so the statistics' batch size is separated from the
    optimizer's. The running buffers take one EMA step per batch with the sub-batches' average
    mean and average unbiased variance.

    On CPU, the step without ghost batches is one compiled op (:mod:`normlab.norms.kernels`,
    same equations, ATen's batch-norm backward; the tests run both paths).
    """

    records_diagnostics = True
    channel_separable = True
    syncable = True

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.1,
        virtual_batch_size: int | None = None,
    ) -> None:
        super().__init__(num_features, eps, momentum)
        if virtual_batch_size is not None and int(virtual_batch_size) < 1:
            raise ValueError(f"virtual_batch_size must be >= 1, got {virtual_batch_size}")
        self.virtual_batch_size = virtual_batch_size

    def extra_repr(self) -> str:
        ghost = f", virtual_batch_size={self.virtual_batch_size}" if self.virtual_batch_size else ""
        return super().extra_repr() + ghost

    def train_forward(self, x: Tensor) -> Tensor:
        ghost = self.virtual_batch_size
        if ghost is not None and ghost < x.shape[0]:
            return self._ghost_forward(x, ghost)
        if kernels.applies(x, self):
            return kernels.batch_step(self, x)
        n = values_per_channel(x)
        if n == 1:
            mean, var = batch_stats(x)
            self._record(mean, var)
            self.update_running(mean, var, n)
            # x - mu_B is exactly zero here; computing it (rather than folding mu_B into a shift,
            # as the fused kernel does) makes the output exactly `bias`, with zero input gradient
            centered = x - x
            return channel_view(self.bias, x) + channel_view(self.weight, x) * centered
        if self.track_diagnostics:
            before = self.running_mean.clone(), self.reference_std()
        y, mean, invstd = torch.native_batch_norm(
            x,
            self.weight,
            self.bias,
            self.running_mean,
            self.running_var,
            True,
            self.momentum,
            self.eps,
        )
        self.num_batches_tracked += 1
        if self.track_diagnostics:
            var = invstd.detach().pow(-2) - self.eps
            self.diagnostics.record(mean.detach(), var, *before, self.eps)
        return y

    def synced_train_forward(self, x: Tensor) -> Tensor:
        mean, var, count = sync.global_moments(x)
        with torch.no_grad():
            self._record(mean.detach(), var.detach())
            self.update_running(mean.detach(), var.detach(), count)
        return sync.normalize(x, self.weight, self.bias, mean, var, self.eps)

    def _ghost_forward(self, x: Tensor, size: int) -> Tensor:
        if x.shape[0] % size:
            raise ValueError(
                f"virtual_batch_size={size} must divide the batch size, got {x.shape[0]}"
            )
        groups, channels = x.shape[0] // size, self.num_features
        # (G*v, C, *S) -> (v, G*C, *S): each (sub-batch, channel) pair becomes one channel
        stacked = x.view(groups, size, *x.shape[1:]).transpose(0, 1)
        stacked = stacked.reshape(size, groups * channels, *x.shape[2:])
        mean, var = batch_stats(stacked)
        n = values_per_channel(stacked)
        group_mean = mean.view(groups, channels).mean(dim=0)
        group_var = var.view(groups, channels).mean(dim=0)
        self._record(group_mean, group_var)
        self.update_running(group_mean, group_var, n)  # same n per sub-batch: unbiasing commutes
        y = normalize_with_batch_stats(
            stacked, self.weight.repeat(groups), self.bias.repeat(groups), mean, var, self.eps
        )
        return y.view(size, groups, *x.shape[1:]).transpose(0, 1).reshape(x.shape)


@dataclass(frozen=True)
class BatchOptions:
    eps: float = option(1e-5, positive)
    virtual_batch_size: int | None = option(None, optional(at_least(1)))

    def check(self, facts: RunFacts) -> None:
        size = self.virtual_batch_size
        if size is not None and facts.batch_size % size:
            raise ConfigError(
                "virtual_batch_size", size, f"a divisor of batch_size={facts.batch_size}"
            )


def _ghost(options: BatchOptions, batch_size: int) -> bool:
    return options.virtual_batch_size is not None and options.virtual_batch_size < batch_size


def _label(options: BatchOptions) -> str:
    return "batch (ghost)" if options.virtual_batch_size is not None else "batch"


def _record(options: BatchOptions, batch_size: int) -> dict[str, int]:
    if not _ghost(options, batch_size):
        return {}
    return {"statistics_batch_size": options.virtual_batch_size}


def _tags(options: BatchOptions) -> list[str]:
    size = options.virtual_batch_size
    return [] if size is None else [f"ghost:{size}"]


MODE = register(
    Mode(
        name="batch",
        layer=BatchNorm,
        options=BatchOptions,
        label=_label,
        tags=_tags,
        record=_record,
    )
)
