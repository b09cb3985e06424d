"""Normalization modes of a user's own, outside the normlab package (the docs' worked example;
the tests train them end to end).

``EvoNormB0`` subclasses normlab's running-statistics base, so it gets momentum schedules,
diagnostics and precise-BN; ``RMSNorm`` is a plain module, which trains and is recorded without
them; ``BlendedStatsNorm`` declares a scheduled attribute of its own, which the trainer follows.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from normlab.norms import RunningStatsNorm, Scheduled


class EvoNormB0(RunningStatsNorm):
    """EvoNorm-B0 (Liu et al. 2020, arXiv 2004.02967), a normalization-activation layer:

        y = x / max(sqrt(var_B + eps), v1 * x + sqrt(var_instance_group + eps)) * weight + bias

    ``var_B`` is the per-channel batch variance in training and its moving average
    (``running_var``, kept by the base class) at inference; the instance variance is per sample
    over ``groups`` groups of channels and their positions.
    """

    def __init__(
        self, num_features: int, groups: int = 8, eps: float = 1e-5, momentum: float = 0.1
    ) -> None:
        super().__init__(num_features, eps, momentum)
        if groups < 1 or num_features % groups:
            raise ValueError(f"groups={groups} must divide num_features={num_features}")
        self.groups = groups
        self.v1 = nn.Parameter(torch.ones(num_features))

    def train_forward(self, x: Tensor) -> Tensor:
        dims = [0, *range(2, x.dim())]
        var = x.var(dim=dims, correction=0)
        with torch.no_grad():
            self.update_running(x.mean(dim=dims), var, x.numel() // x.shape[1])
        return self._normalize(x, var)

    def eval_forward(self, x: Tensor) -> Tensor:
        return self._normalize(x, self.running_var)

    def _normalize(self, x: Tensor, batch_var: Tensor) -> Tensor:
        per_channel = (1, -1, *([1] * (x.dim() - 2)))
        grouped = x.reshape(x.shape[0], self.groups, -1)
        instance_std = (grouped.var(dim=2, correction=0, keepdim=True) + self.eps).sqrt()
        instance_std = instance_std.expand_as(grouped).reshape(x.shape)
        batch_std = (batch_var + self.eps).sqrt().view(per_channel)
        denominator = torch.maximum(batch_std, self.v1.view(per_channel) * x + instance_std)
        return x / denominator * self.weight.view(per_channel) + self.bias.view(per_channel)


class RMSNorm(nn.Module):
    """Each sample divided by the RMS of its features (and positions), then scaled per channel
    (Zhang & Sennrich 2019, arXiv 1910.07467): batch-independent."""

    def __init__(self, num_features: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features))

    def forward(self, x: Tensor) -> Tensor:
        per_channel = (1, -1, *([1] * (x.dim() - 2)))
        rms = x.square().mean(dim=tuple(range(1, x.dim())), keepdim=True).add(self.eps).sqrt()
        return x / rms * self.weight.view(per_channel)


class BlendedStatsNorm(RunningStatsNorm):
    """Normalizes with ``blend`` times the batch statistics plus ``1 - blend`` times the running
    averages: 1 is batch norm, 0 normalizes with the moving averages. ``blend`` is the mode's
    own scheduled attribute; its schedule is the YAML's ``blend`` node (``norm.blend``)."""

    schedules: ClassVar[dict[str, Scheduled]] = {
        **RunningStatsNorm.schedules,
        "blend": Scheduled("norm.blend", 0.0, 1.0),
    }

    def __init__(
        self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, blend: float = 1.0
    ) -> None:
        super().__init__(num_features, eps, momentum)
        self.blend = blend

    @property
    def blend(self) -> float:
        return self._blend

    @blend.setter
    def blend(self, value: float) -> None:
        self._blend = self.schedules["blend"].checked("blend", value)

    def train_forward(self, x: Tensor) -> Tensor:
        dims = [0, *range(2, x.dim())]
        mean, var = x.mean(dim=dims), x.var(dim=dims, correction=0)
        running_mean, running_var = self.running_mean.clone(), self.running_var.clone()
        with torch.no_grad():
            self.update_running(mean, var, x.numel() // x.shape[1])
        mean = self.blend * mean + (1 - self.blend) * running_mean
        var = self.blend * var + (1 - self.blend) * running_var
        per_channel = (1, -1, *([1] * (x.dim() - 2)))
        x_hat = (x - mean.view(per_channel)) / (var.view(per_channel) + self.eps).sqrt()
        return x_hat * self.weight.view(per_channel) + self.bias.view(per_channel)
