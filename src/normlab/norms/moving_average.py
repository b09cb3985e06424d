"""``moving_average``: normalize with the moving averages during training too (the seed
question's alternative to batch statistics)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from normlab.errors import ConfigError
from normlab.norms import kernels, sync
from normlab.norms.base import RunningStatsNorm
from normlab.norms.options import RunFacts, one_of, option, positive
from normlab.norms.registry import Mode, register
from normlab.norms.stats import (
    batch_stats,
    channel_view,
    normalize_with_constant_stats,
    reduction_dims,
    values_per_channel,
)

UPDATE_ORDERS = ("before", "after")


class MovingAverageNorm(RunningStatsNorm):
    """Batch norm that normalizes with the moving averages during training too.

    ``update="before"``: the EMA absorbs this batch first, then normalizes the batch with it;
    ``"after"``: normalize with the EMA of past batches, then absorb this one.
    ``grad_through_batch=False`` treats the statistics as constants to autograd: gradient descent
    cannot see that moving a pre-norm bias also moves the statistics, the interaction the BN paper
    (§2) and the BRN paper (§2) identify as the cause of blow-ups. ``True`` (requires ``before``)
    lets the gradient flow through the current batch's share ``momentum * mu_B`` and
    ``momentum * var_B`` of the averages. Eval: identical to batch norm's.

    On CPU, the ``grad_through_batch=False`` step is one compiled op (:mod:`normlab.norms.kernels`,
    same equations; the tests run both paths).
    """

    records_diagnostics = True
    channel_separable = True
    syncable = True

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.1,
        update: str = "before",
        grad_through_batch: bool = False,
    ) -> None:
        super().__init__(num_features, eps, momentum)
        if update not in UPDATE_ORDERS:
            raise ValueError(f"update must be one of {UPDATE_ORDERS}, got {update!r}")
        if grad_through_batch and update != "before":
            raise ValueError(
                "grad_through_batch=True requires update='before': with 'after' the statistics "
                "used hold no part of the current batch to differentiate through"
            )
        self.update = update
        self.grad_through_batch = bool(grad_through_batch)

    def extra_repr(self) -> str:
        options = f"update={self.update}, grad_through_batch={self.grad_through_batch}"
        return f"{super().extra_repr()}, {options}"

    def train_forward(self, x: Tensor) -> Tensor:
        if not self.grad_through_batch and kernels.applies(x, self):
            return kernels.moving_average_step(self, x)
        n = values_per_channel(x)
        mean, var = batch_stats(x)
        self._record(mean, var)
        if self.grad_through_batch:
            return self._forward_through_batch(x, n)
        return self._forward_with_constants(x, mean, var, n)

    def synced_train_forward(self, x: Tensor) -> Tensor:
        with torch.set_grad_enabled(self.grad_through_batch and torch.is_grad_enabled()):
            mean, var, n = sync.global_moments(x)
        self._record(mean.detach(), var.detach())
        if self.grad_through_batch:
            return self._normalize_through(x, mean, var * (n / (n - 1)) if n > 1 else None)
        return self._forward_with_constants(x, mean, var, n)

    def _forward_with_constants(self, x: Tensor, mean: Tensor, var: Tensor, n: int) -> Tensor:
        if self.update == "before":
            self.update_running(mean, var, n)
        y = normalize_with_constant_stats(
            x, self.weight, self.bias, self.running_mean, self.running_var, self.eps
        )
        if self.update == "after":
            self.update_running(mean, var, n)
        return y

    def _forward_through_batch(self, x: Tensor, n: int) -> Tensor:
        dims = reduction_dims(x)
        # plain sums, differentiable: x.var over (N, H, W) of an NCHW tensor is slow on CPU
        batch_mean = x.sum(dim=dims) / n
        batch_var = None
        if n > 1:
            batch_var = (x - channel_view(batch_mean, x)).square().sum(dim=dims) / (n - 1)
        return self._normalize_through(x, batch_mean, batch_var)

    def _normalize_through(self, x: Tensor, batch_mean: Tensor, batch_var: Tensor | None):
        """Normalize with this batch's share of the averages, the gradient flowing through
        ``batch_mean`` and ``batch_var`` (unbiased; None: one value per channel)."""
        m = self.momentum
        used_mean = (1 - m) * self.running_mean + m * batch_mean
        if batch_var is not None:
            used_var = (1 - m) * self.running_var + m * batch_var
        else:
            used_var = self.running_var.clone()
        with torch.no_grad():
            self.running_mean.copy_(used_mean)
            self.running_var.copy_(used_var)
            self.num_batches_tracked += 1
        scale = self.weight * torch.rsqrt(used_var + self.eps)
        shift = self.bias - used_mean * scale
        return x * channel_view(scale, x) + channel_view(shift, x)


@dataclass(frozen=True)
class MovingAverageOptions:
    eps: float = option(1e-5, positive)
    update: str = option("before", one_of(*UPDATE_ORDERS))
    grad_through_batch: bool = option(False)

    def check(self, facts: RunFacts) -> None:
        if self.grad_through_batch and self.update != "before":
            raise ConfigError(
                "grad_through_batch",
                True,
                "only with norm.update=before (the statistics used must contain the current "
                "batch to differentiate through it)",
            )


def _label(options: MovingAverageOptions) -> str:
    return "moving_average (grad through batch)" if options.grad_through_batch else "moving_average"


def _tags(options: MovingAverageOptions) -> list[str]:
    tags = [f"update:{options.update}"]
    return tags + (["grad_through_batch"] if options.grad_through_batch else [])


MODE = register(
    Mode(
        name="moving_average",
        layer=MovingAverageNorm,
        options=MovingAverageOptions,
        label=_label,
        tags=_tags,
    )
)
