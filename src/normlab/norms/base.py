"""The running-statistics base: what every batch-dependent normalization shares.

A subclass gets the affine ``weight``/``bias``, the ``running_mean``/``running_var`` buffers and
their EMA update, the ``momentum`` attribute that a trainer sets from its schedule before each
step (:attr:`RunningStatsNorm.schedules`), the eval-mode forward with the running statistics,
per-step diagnostics (:class:`~normlab.norms.diagnostics.NormDiagnostics`) and precise-BN
recalibration (:mod:`normlab.precise_bn`, through :meth:`update_running`). It implements
:meth:`train_forward`; a layer that records its own diagnostics (cheaper where it computes the
batch statistics anyway) sets ``records_diagnostics = True``, otherwise the base records them
before each training step.

``sync_statistics`` (False unless a data-parallel run with ``norm.sync`` turns it on, for a
layer whose class is ``syncable``): the training-mode forward takes its batch statistics over
every rank's slice (:mod:`normlab.norms.sync`) through the layer's :meth:`synced_train_forward`,
and with population statistics the running statistics absorb the global batch's. Every rank then
holds the same running buffers.

``statistics`` says which statistics a training-mode forward normalizes with: ``"batch"`` (the
layer's own :meth:`train_forward`) or ``"population"`` (the running statistics, as in eval,
gradients through no statistic; a trainer switches to it at ``norm.switch_at``). With
population statistics the running statistics still absorb each batch (:meth:`absorb`, after the
batch is normalized) unless ``track_running`` is False (``norm.switch_freeze``).

Conventions:

* ``momentum`` is the weight of the new batch (PyTorch's convention): ``running = (1 -
  momentum) * running + momentum * batch``. The "decay" of the moving-average literature is
  ``1 - momentum``.
* The running variance holds the *unbiased* batch variance, as ``torch.nn.BatchNorm`` does.
  With one value per channel no within-batch variance exists: the running mean is updated and
  the running variance is left as it was.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normlab.norms import kernels, sync
from normlab.norms.diagnostics import NormDiagnostics
from normlab.norms.stats import batch_stats, unbiased, values_per_channel


@dataclass(frozen=True)
class Scheduled:
    """A layer attribute that follows a schedule: the config node holding the schedule, and the
    range every value must lie in."""

    node: str
    low: float
    high: float = math.inf

    def checked(self, name: str, value: float) -> float:
        value = float(value)
        if not self.low <= value <= self.high:
            raise ValueError(f"{name} must be in [{self.low:g}, {self.high:g}], got {value}")
        return value


STATISTICS = ("batch", "population")


def check_positive(name: str, value: float) -> float:
    value = float(value)
    if not value > 0.0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


class RunningStatsNorm(nn.Module):
    """Affine parameters, running buffers, scheduled attributes and diagnostics.

    :attr:`schedules` maps each attribute a trainer sets per step to its :class:`Scheduled`
    (config node and range); subclasses extend or clear it. ``momentum`` here is the weight of
    the new batch in [0, 1], scheduled from the config's ``momentum`` node.
    """

    schedules: ClassVar[dict[str, Scheduled]] = {"momentum": Scheduled("momentum", 0.0, 1.0)}
    records_diagnostics: ClassVar[bool] = False  # True: train_forward records them itself
    # True: channels never interact, so independent batches may be stacked along the channel
    # dim of a widened copy (normlab.evaluation); a layer mixing channels leaves it False
    channel_separable: ClassVar[bool] = False
    # True: a training forward reads what earlier ones left (MABN's windows of past steps), so
    # the batches of one pass of precise statistics (normlab.precise_bn) are not independent
    reads_past_batches: ClassVar[bool] = False
    # the diagnostics a layer that clips corrections records: per field, the fraction of
    # channels clipped (one row each of the step's raw record, filled by the layer)
    clip_fields: ClassVar[tuple[str, ...]] = ()
    # True: synced_train_forward takes the statistics over every rank (norm.sync)
    syncable: ClassVar[bool] = False

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        if int(num_features) < 1:
            raise ValueError(f"num_features must be >= 1, got {num_features}")
        self.num_features = int(num_features)
        self.eps = check_positive("eps", eps)
        self.momentum = momentum
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self._register_spread_buffer()
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        self.track_diagnostics = True
        self.statistics = "batch"
        self.track_running = True
        self.sync_statistics = False
        self.diagnostics = NormDiagnostics(num_features, self.clip_fields)
        self.compiled_step = kernels.ENABLED

    def _register_spread_buffer(self) -> None:
        self.register_buffer("running_var", torch.ones(self.num_features))

    @property
    def momentum(self) -> float:
        return self._momentum

    @momentum.setter
    def momentum(self, value: float) -> None:
        self._momentum = RunningStatsNorm.schedules["momentum"].checked("momentum", value)

    @property
    def statistics(self) -> str:
        return self._statistics

    @statistics.setter
    def statistics(self, value: str) -> None:
        if value not in STATISTICS:
            raise ValueError(f"statistics must be one of {', '.join(STATISTICS)}, got {value!r}")
        self._statistics = value

    @property
    def compiled_step(self) -> bool:
        """Whether the training step (and the diagnostics' fold) runs as one compiled CPU op
        where the layer has one (:mod:`normlab.norms.kernels`); False keeps the pure-PyTorch
        path, which is otherwise used on GPU and wherever the extension cannot be built."""
        return self._compiled_step

    @compiled_step.setter
    def compiled_step(self, value: bool) -> None:
        self._compiled_step = bool(value)
        self.diagnostics.compiled = self._compiled_step

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        weight = self._parameters["weight"]  # not self.weight: nn.Module.__getattr__ costs 0.5 us
        if x.dtype != weight.dtype and torch.is_autocast_enabled(x.device.type):
            # under autocast the statistics and running buffers stay in the layer's own dtype
            with torch.autocast(x.device.type, enabled=False):
                return self.forward(x.to(weight.dtype)).to(x.dtype)
        if not self.training:
            return self.eval_forward(x)
        if self.sync_statistics:
            return self._synced_forward(x)
        if self._statistics == "population":
            return self.population_forward(x)
        if self.track_diagnostics and not self.records_diagnostics:
            self._record(*batch_stats(x))
        return self.train_forward(x)

    def train_forward(self, x: Tensor) -> Tensor:
        """The training-mode forward; it updates the running statistics."""
        raise NotImplementedError

    def synced_train_forward(self, x: Tensor) -> Tensor:
        """The training-mode forward with statistics over every rank's slice of the batch."""
        raise NotImplementedError

    def _synced_forward(self, x: Tensor) -> Tensor:
        if self._statistics == "batch":
            return self.synced_train_forward(x)
        with torch.no_grad():
            mean, var, count = sync.global_moments(x)
        return self.population_forward(x, (mean, var, count))

    def eval_forward(self, x: Tensor) -> Tensor:
        mean, var = self.population_stats()
        return F.batch_norm(x, mean, var, self.weight, self.bias, False, 0.0, self.eps)

    def population_forward(
        self, x: Tensor, synced: tuple[Tensor, Tensor, int] | None = None
    ) -> Tensor:
        """The training-mode forward with population statistics: the batch normalized with the
        running statistics as they were before it, then absorbed unless ``track_running`` is
        off. The statistics are copies: autograd keeps what the forward read, and the buffers
        change in place afterwards. ``synced``: the global batch's mean, variance and count,
        absorbed instead of this slice's."""
        with torch.no_grad():
            mean, var = batch_stats(x) if synced is None else synced[:2]
            # a clipping layer applies no r or d with population statistics: nothing is clipped
            unclipped = (torch.zeros_like(mean, dtype=torch.bool),) * len(self.clip_fields)
            self._record(mean, var, unclipped)
            used_mean, used_var = (s.clone() for s in self.population_stats())
        y = F.batch_norm(x, used_mean, used_var, self.weight, self.bias, False, 0.0, self.eps)
        if self.track_running and synced is not None:
            self.update_running(mean, var, synced[2])
        elif self.track_running:
            self.absorb(x, mean, var)
        return y

    @torch.no_grad()
    def absorb(self, x: Tensor, mean: Tensor, var: Tensor) -> None:
        """Take batch ``x`` (its ``mean`` and biased ``var``) into the running statistics without
        normalizing it: :meth:`update_running`, the layer's EMA step (a layer whose statistics
        follow another rule overrides this)."""
        self.update_running(mean, var, values_per_channel(x))

    def _check_input(self, x: Tensor) -> None:
        if x.dim() < 2 or x.shape[1] != self.num_features:
            expected = f"(N, {self.num_features}, *spatial)"
            raise ValueError(f"{type(self).__name__} expects {expected}, got {tuple(x.shape)}")

    def population_stats(self) -> tuple[Tensor, Tensor]:
        """The (mean, variance) used at inference, variance without eps."""
        return self.running_mean, self.running_var

    @torch.no_grad()
    def set_population_stats(self, mean: Tensor, var: Tensor) -> None:
        self.running_mean.copy_(mean)
        self.running_var.copy_(var)

    def reference_std(self) -> Tensor:
        return (self.running_var + self.eps).sqrt()

    @torch.no_grad()
    def update_running(self, mean: Tensor, var: Tensor, n: int) -> None:
        """EMA update with this batch's mean and biased variance over ``n`` values per channel."""
        self.running_mean.lerp_(mean, self.momentum)
        if n > 1:
            self.running_var.lerp_(unbiased(var, n), self.momentum)
        self.num_batches_tracked += 1

    def diagnostics_slot(self) -> Tensor | None:
        """Where this step's raw diagnostics go (see :meth:`NormDiagnostics.slot`), or None
        when they are switched off."""
        if not self.track_diagnostics:
            return None
        return self.diagnostics.slot(self._buffers["running_mean"], self.eps)

    def _record(self, mean: Tensor, var: Tensor, clipped: tuple[Tensor, Tensor] = ()) -> None:
        if self.track_diagnostics:
            self.diagnostics.record(
                mean, var, self.running_mean, self.reference_std(), self.eps, clipped
            )


def norm_layers(model: nn.Module) -> dict[str, RunningStatsNorm]:
    """The running-statistics normalization layers of ``model`` by module name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, RunningStatsNorm)}


def is_batch_dependent(module: nn.Module) -> bool:
    return isinstance(module, RunningStatsNorm)


def is_batch_independent(module: nn.Module) -> bool:
    """A batch-independent baseline's layer (group, layer, none): its class says so."""
    return bool(getattr(type(module), "batch_independent", False))
