"""``renorm``: Batch Renormalization (Ioffe 2017, arXiv 1702.03275), Algorithm 1."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from normlab.norms import kernels, sync
from normlab.norms.base import RunningStatsNorm, Scheduled
from normlab.norms.options import option, positive, scheduled
from normlab.norms.registry import Mode, register
from normlab.norms.stats import (
    batch_stats,
    normalize_with_batch_stats,
    stats_keeping_centered,
    values_per_channel,
)
from normlab.quantities import Quantity
from normlab.schedules import ScheduleConfig

# What renorm's runs log beyond every mode's: the fractions of channels whose r and d were
# clipped, each against its bound's schedule (the layer records them, the figures draw them).
CLIPPED = (
    Quantity("r_clip_frac", "r clipped (% of channels)", percent=True, bound="rmax"),
    Quantity("d_clip_frac", "d clipped (% of channels)", percent=True, bound="dmax"),
)


class BatchRenorm(RunningStatsNorm):
    """Batch Renormalization, Algorithm 1 of Ioffe 2017 (arXiv 1702.03275).

    ``sigma_B = sqrt(var_B + eps)``; ``r = clip(sigma_B / sigma, 1/rmax, rmax)`` and
    ``d = clip((mu_B - mu) / sigma, -dmax, dmax)`` are constants to autograd;
    ``x_hat = (x - mu_B) / sigma_B * r + d``; ``y = weight * x_hat + bias``. Then
    ``mu += momentum * (mu_B - mu)`` and ``sigma += momentum * (sigma_B - sigma)``: the paper keeps
    the moving *standard deviation* (``running_std``, eps included), and inference computes
    ``(x - mu) / sigma``. With ``rmax = 1, dmax = 0`` training equals batch norm exactly;
    only the running estimate differs (EMA of ``sigma_B`` rather than of the unbiased variance).
    ``rmax`` and ``dmax`` follow the mode's own schedules, the options ``norm.rmax``/``norm.dmax``.

    r and d are folded into the affine of the normalization (``weight * r``, ``weight * d + bias``)
    instead of composing elementwise ops: on CPU the whole step (statistics, r and d, running
    updates, diagnostics, output) is one compiled op (:mod:`normlab.norms.kernels`), elsewhere
    one fused batch-norm kernel after a few per-channel ops.

    Batch size 1 on ``(1, C)``: ``sigma_B = sqrt(eps)`` and ``x - mu_B = 0``, so ``x_hat = d``:
    the output carries ``clip((x - mu)/sigma)`` forward but, d being a constant, no gradient
    reaches the input; ``r`` saturates at ``1/rmax`` and ``running_std`` decays towards
    ``sqrt(eps)``, so inference degrades as training goes on.
    """

    schedules: ClassVar[dict[str, Scheduled]] = {
        **RunningStatsNorm.schedules,
        "rmax": Scheduled("norm.rmax", 1.0),
        "dmax": Scheduled("norm.dmax", 0.0),
    }
    records_diagnostics = True
    channel_separable = True
    syncable = True
    clip_fields = tuple(q.name for q in CLIPPED)  # r, then d: the order train_forward records

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.1,
        rmax: float = 1.0,
        dmax: float = 0.0,
    ) -> None:
        super().__init__(num_features, eps, momentum)
        self.rmax = rmax
        self.dmax = dmax

    def _register_spread_buffer(self) -> None:
        self.register_buffer("running_std", torch.ones(self.num_features))

    @property
    def rmax(self) -> float:
        return self._rmax

    @rmax.setter
    def rmax(self, value: float) -> None:
        self._rmax = self.schedules["rmax"].checked("rmax", value)

    @property
    def dmax(self) -> float:
        return self._dmax

    @dmax.setter
    def dmax(self, value: float) -> None:
        self._dmax = self.schedules["dmax"].checked("dmax", value)

    @property
    def running_var(self) -> Tensor:
        """The variance the moving standard deviation stands for (``sigma**2 - eps``)."""
        return (self.running_std.square() - self.eps).clamp_min(0.0)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rmax={self.rmax}, dmax={self.dmax}"

    def reference_std(self) -> Tensor:
        return self.running_std

    @torch.no_grad()
    def set_population_stats(self, mean: Tensor, var: Tensor) -> None:
        self.running_mean.copy_(mean)
        self.running_std.copy_((var + self.eps).sqrt())

    @torch.no_grad()
    def update_running(self, mean: Tensor, var: Tensor, n: int) -> None:
        self._update_running_std(mean, (var + self.eps).sqrt())

    def _update_running_std(self, mean: Tensor, batch_std: Tensor) -> None:
        self.running_mean.lerp_(mean, self.momentum)
        self.running_std.lerp_(batch_std, self.momentum)
        self.num_batches_tracked += 1

    def eval_forward(self, x: Tensor) -> Tensor:
        # (x - mu) / sigma with eps already inside running_std: the kernel adds eps back to
        # sigma^2 - eps (torch < 2.13 refuses eps = 0)
        variance = self.running_std.square().sub_(self.eps)
        return F.batch_norm(
            x, self.running_mean, variance, self.weight, self.bias, False, 0.0, self.eps
        )

    def train_forward(self, x: Tensor) -> Tensor:
        if kernels.applies(x, self):
            return kernels.renorm_step(self, x)
        with torch.no_grad():
            # one value per channel: normalizing the centered zeros keeps x_hat exactly d
            if (x.dim() > 2 and x.device.type == "cpu") or values_per_channel(x) == 1:
                mean, var, centered = stats_keeping_centered(x)
            else:
                (mean, var), centered = batch_stats(x), None
            batch_std = (var + self.eps).sqrt_()
            r_raw = batch_std / self.running_std
            d_raw = (mean - self.running_mean).div_(self.running_std)
            r = r_raw.clamp(1.0 / self.rmax, self.rmax)
            d = d_raw.clamp(-self.dmax, self.dmax)
        if self.track_diagnostics:
            self._record(mean, var, (r != r_raw, d != d_raw))
        y = normalize_with_batch_stats(
            x,
            self.weight * r,
            torch.addcmul(self.bias, self.weight, d),
            mean,
            var,
            self.eps,
            centered,
        )
        with torch.no_grad():
            self._update_running_std(mean, batch_std)
        return y

    def synced_train_forward(self, x: Tensor) -> Tensor:
        mean, var, _ = sync.global_moments(x)
        with torch.no_grad():
            batch_mean, batch_var = mean.detach(), var.detach()
            batch_std = (batch_var + self.eps).sqrt_()
            r_raw = batch_std / self.running_std
            d_raw = (batch_mean - self.running_mean).div_(self.running_std)
            r = r_raw.clamp(1.0 / self.rmax, self.rmax)
            d = d_raw.clamp(-self.dmax, self.dmax)
            self._record(batch_mean, batch_var, (r != r_raw, d != d_raw))
        shift = torch.addcmul(self.bias, self.weight, d)
        y = sync.normalize(x, self.weight * r, shift, mean, var, self.eps)
        with torch.no_grad():
            self._update_running_std(batch_mean, batch_std)
        return y


@dataclass(frozen=True)
class RenormOptions:
    """``rmax`` and ``dmax`` default to the paper's schedule (Ioffe 2017, section 4): rmax = 1 and
    dmax = 0 for the first 5k steps, then relaxed linearly to rmax = 3 at 40k and dmax = 5 at
    25k; the knots are the paper's steps divided by 150k, the length of its Fig. 1 run, so the
    schedule scales with the run."""

    eps: float = option(1e-5, positive)
    rmax: ScheduleConfig = scheduled(kind="piecewise", knots=[[0.0333, 1.0], [0.2667, 3.0]])
    dmax: ScheduleConfig = scheduled(kind="piecewise", knots=[[0.0333, 0.0], [0.1667, 5.0]])


MODE = register(
    Mode(
        name="renorm",
        layer=BatchRenorm,
        options=RenormOptions,
        quantities=CLIPPED,
    )
)
