"""Normalization layers compared by normlab, and the factory that builds them from a mode string.

Every batch-dependent layer here normalizes per channel over the batch and spatial dims of an
``(N, C)`` or ``(N, C, *spatial)`` input, keeps ``running_mean``/``running_var`` (renorm keeps
``running_std``, as the paper does), and applies an affine ``weight``/``bias``.

Conventions shared by all modes:

* ``momentum`` is the weight of the new batch in the exponential moving average (PyTorch's
  convention): ``running = (1 - momentum) * running + momentum * batch``. The "decay" of the
  moving-average literature is ``1 - momentum``. ``momentum``, ``rmax`` and ``dmax`` are plain
  attributes that a trainer sets from its schedules before each step.
* The running variance holds the *unbiased* batch variance, as ``torch.nn.BatchNorm`` does.
  With one value per channel (batch size 1 on an ``(1, C)`` input) no within-batch variance
  exists: the running mean is updated and the running variance is left as it was.
* Batch size 1 never raises. For ``batch``, one value per channel makes ``x - mu_B`` exactly 0,
  so the layer outputs ``bias`` whatever the input, and no gradient reaches the input: the
  "every example turns to zero" failure, shown rather than hidden.

References: Ioffe & Szegedy 2015 (arXiv 1502.03167); Ioffe 2017, Batch Renormalization
(arXiv 1702.03275), Algorithm 1; Wu & He 2018, Group Normalization (arXiv 1803.08494).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MODES = ("batch", "moving_average", "renorm", "group", "layer", "none")
UPDATE_ORDERS = ("before", "after")


def _check_unit_interval(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1] (weight of the new batch), got {value}")
    return value


def _check_positive(name: str, value: float) -> float:
    value = float(value)
    if not value > 0.0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


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
    """Per-channel mean and biased variance of ``x``, outside autograd (one fused native pass)."""
    with torch.no_grad():
        return torch.batch_norm_update_stats(x, None, None, 0.0)


def unbiased(var: Tensor, n: int) -> Tensor:
    return var * (n / (n - 1))


def _channel_view(t: Tensor, x: Tensor) -> Tensor:
    return t.view(1, -1, *([1] * (x.dim() - 2)))


class _NormalizeWithBatchStats(torch.autograd.Function):
    """``weight * (x - mean) * invstd + bias`` where ``mean``/``var`` are ``x``'s own batch stats.

    The stats come in precomputed (they are needed earlier, e.g. for renorm's r and d), so the
    forward is one elementwise pass of the native kernel, and the backward is PyTorch's own
    training-mode batch-norm backward: the gradient flows through the batch statistics exactly as
    in ``F.batch_norm(training=True)``. Works with one value per channel, where the native
    training forward refuses.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, mean, var, eps):
        invstd = torch.rsqrt(var + eps)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.eps = eps
        return F.batch_norm(x, mean, var, weight, bias, False, 0.0, eps)

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
        return grad_x, grad_w, grad_b, None, None, None


def normalize_with_batch_stats(
    x: Tensor, weight: Tensor, bias: Tensor, mean: Tensor, var: Tensor, eps: float
) -> Tensor:
    """Training-mode batch norm of ``x`` given its own (biased) batch statistics."""
    return _NormalizeWithBatchStats.apply(x, weight, bias, mean, var, eps)


class NormDiagnostics:
    """Per-channel statistics a layer records each training step, accumulated on its device.

    Recorded per step: ``mean_shift = |mu_B - mu| / sigma`` and ``std_ratio = sigma_B / sigma``
    (mu, sigma: the population estimates *before* this step's update; sigma includes eps), the
    mean and RMS of the layer's input (derived from the batch stats, no extra pass over the
    data) and, for renorm, the fractions of channels whose r or d was clipped. Nothing is copied
    to the host until :meth:`collect`, so recording costs no device sync.
    """

    CHANNEL_FIELDS = ("mean_shift", "std_ratio")
    SCALAR_FIELDS = ("prenorm_mean", "prenorm_rms")
    CLIP_FIELDS = ("r_clip_frac", "d_clip_frac")

    def __init__(self, num_features: int, with_clipping: bool = False) -> None:
        self.num_features = num_features
        self.fields = self.SCALAR_FIELDS + (self.CLIP_FIELDS if with_clipping else ())
        self.reset()

    def reset(self) -> None:
        self.steps = 0
        self._channel_sums: Tensor | None = None
        self._scalar_sums: Tensor | None = None
        self.last_mean_shift: Tensor | None = None
        self.last_std_ratio: Tensor | None = None

    @torch.no_grad()
    def record(
        self,
        batch_mean: Tensor,
        batch_var: Tensor,
        ref_mean: Tensor,
        ref_std: Tensor,
        eps: float,
        clipped: tuple[Tensor, Tensor] = (),
    ) -> None:
        mean_shift = (batch_mean - ref_mean).abs_().div_(ref_std)
        std_ratio = (batch_var + eps).sqrt_().div_(ref_std)
        rms = (batch_var + batch_mean.square()).mean().sqrt()
        channels = torch.stack((mean_shift, std_ratio))
        scalars = torch.stack((batch_mean.mean(), rms, *(c.float().mean() for c in clipped)))
        if self._channel_sums is None:
            self._channel_sums, self._scalar_sums = channels, scalars
        else:
            self._channel_sums += channels
            self._scalar_sums += scalars
        self.last_mean_shift, self.last_std_ratio = mean_shift, std_ratio
        self.steps += 1

    def per_channel(self) -> dict[str, Tensor]:
        """Per-channel means of ``mean_shift`` and ``std_ratio`` since the last reset."""
        if self.steps == 0:
            return {}
        return dict(zip(self.CHANNEL_FIELDS, self._channel_sums / self.steps, strict=True))

    def collect(self, reset: bool = True) -> dict[str, float]:
        """Means over steps (and channels) since the last collect, in one host sync."""
        if self.steps == 0:
            return {}
        channel_means = (self._channel_sums / self.steps).mean(dim=1)
        means = torch.cat((channel_means, self._scalar_sums / self.steps)).tolist()
        out = dict(zip(self.CHANNEL_FIELDS + self.fields, means, strict=True))
        if reset:
            self.reset()
        return out


class _RunningStatsNorm(nn.Module):
    """Affine parameters, running buffers, the momentum attribute and diagnostics."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        if int(num_features) < 1:
            raise ValueError(f"num_features must be >= 1, got {num_features}")
        self.num_features = int(num_features)
        self.eps = _check_positive("eps", eps)
        self.momentum = momentum
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self._register_spread_buffer()
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        self.track_diagnostics = True
        self.diagnostics = NormDiagnostics(num_features, with_clipping=self.clips)

    clips = False

    def _register_spread_buffer(self) -> None:
        self.register_buffer("running_var", torch.ones(self.num_features))

    @property
    def momentum(self) -> float:
        return self._momentum

    @momentum.setter
    def momentum(self, value: float) -> None:
        self._momentum = _check_unit_interval("momentum", value)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"

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

    def _record(self, mean: Tensor, var: Tensor, clipped: tuple[Tensor, Tensor] = ()) -> None:
        if self.track_diagnostics:
            self.diagnostics.record(
                mean, var, self.running_mean, self.reference_std(), self.eps, clipped
            )

    def _eval_forward(self, x: Tensor) -> Tensor:
        mean, var = self.population_stats()
        return F.batch_norm(x, mean, var, self.weight, self.bias, False, 0.0, self.eps)


class BatchNorm(_RunningStatsNorm):
    """Standard batch normalization (Ioffe & Szegedy 2015, Algorithm 1).

    Train: normalize with the batch mean and biased variance; gradients flow through them. The
    running buffers follow ``torch.nn.BatchNorm`` (unbiased variance). Eval: running stats.
    """

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        if not self.training:
            return self._eval_forward(x)
        n = values_per_channel(x)
        if n == 1:
            mean, var = batch_stats(x)
            self._record(mean, var)
            self.update_running(mean, var, n)
            # x - mu_B is exactly zero here; computing it (rather than folding mu_B into a shift,
            # as the fused kernel does) makes the output exactly `bias`, with zero input gradient
            centered = x - x
            return _channel_view(self.bias, x) + _channel_view(self.weight, x) * centered
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


class MovingAverageNorm(_RunningStatsNorm):
    """Batch norm that normalizes with the moving averages during training too.

    ``update="before"``: the EMA absorbs this batch first, then normalizes the batch with it;
    ``"after"``: normalize with the EMA of past batches, then absorb this one.
    ``grad_through_batch=False`` treats the statistics as constants to autograd: gradient descent
    cannot see that moving a pre-norm bias also moves the statistics, the interaction the BN paper
    (§2) and the BRN paper (§2) identify as the cause of blow-ups. ``True`` (requires ``before``)
    lets the gradient flow through the current batch's share ``momentum * mu_B`` and
    ``momentum * var_B`` of the averages. Eval: identical to :class:`BatchNorm`.
    """

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

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        if not self.training:
            return self._eval_forward(x)
        n = values_per_channel(x)
        mean, var = batch_stats(x)
        self._record(mean, var)
        if self.grad_through_batch:
            return self._forward_through_batch(x, n)
        if self.update == "before":
            self.update_running(mean, var, n)
        y = F.batch_norm(
            x,
            self.running_mean.clone(),
            self.running_var.clone(),
            self.weight,
            self.bias,
            False,
            0.0,
            self.eps,
        )
        if self.update == "after":
            self.update_running(mean, var, n)
        return y

    def _forward_through_batch(self, x: Tensor, n: int) -> Tensor:
        dims = reduction_dims(x)
        m = self.momentum
        batch_mean = x.mean(dim=dims)
        used_mean = (1 - m) * self.running_mean + m * batch_mean
        if n > 1:
            batch_var = x.var(dim=dims, correction=1)
            used_var = (1 - m) * self.running_var + m * batch_var
        else:
            used_var = self.running_var.clone()
        with torch.no_grad():
            self.running_mean.copy_(used_mean)
            self.running_var.copy_(used_var)
            self.num_batches_tracked += 1
        scale = self.weight * torch.rsqrt(used_var + self.eps)
        shift = self.bias - used_mean * scale
        return x * _channel_view(scale, x) + _channel_view(shift, x)


class BatchRenorm(_RunningStatsNorm):
    """Batch Renormalization, Algorithm 1 of Ioffe 2017 (arXiv 1702.03275).

    ``sigma_B = sqrt(var_B + eps)``; ``r = clip(sigma_B / sigma, 1/rmax, rmax)`` and
    ``d = clip((mu_B - mu) / sigma, -dmax, dmax)`` are constants to autograd;
    ``x_hat = (x - mu_B) / sigma_B * r + d``; ``y = weight * x_hat + bias``. Then
    ``mu += momentum * (mu_B - mu)`` and ``sigma += momentum * (sigma_B - sigma)``: the paper keeps
    the moving *standard deviation* (``running_std``, eps included), and inference computes
    ``(x - mu) / sigma``. With ``rmax = 1, dmax = 0`` training equals :class:`BatchNorm` exactly;
    only the running estimate differs (EMA of ``sigma_B`` rather than of the unbiased variance).

    r and d are folded into the affine of the fused kernel (``weight * r``, ``weight * d + bias``)
    instead of composing elementwise ops.

    Batch size 1 on ``(1, C)``: ``sigma_B = sqrt(eps)`` and ``x - mu_B = 0``, so ``x_hat = d``:
    the output carries ``clip((x - mu)/sigma)`` forward but, d being a constant, no gradient
    reaches the input; ``r`` saturates at ``1/rmax`` and ``running_std`` decays towards
    ``sqrt(eps)``, so inference degrades as training goes on.
    """

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

    clips = True

    def _register_spread_buffer(self) -> None:
        self.register_buffer("running_std", torch.ones(self.num_features))

    @property
    def rmax(self) -> float:
        return self._rmax

    @rmax.setter
    def rmax(self, value: float) -> None:
        if not float(value) >= 1.0:
            raise ValueError(f"rmax must be >= 1, got {value}")
        self._rmax = float(value)

    @property
    def dmax(self) -> float:
        return self._dmax

    @dmax.setter
    def dmax(self, value: float) -> None:
        if not float(value) >= 0.0:
            raise ValueError(f"dmax must be >= 0, got {value}")
        self._dmax = float(value)

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
        self.running_mean.lerp_(mean, self.momentum)
        self.running_std.lerp_((var + self.eps).sqrt(), self.momentum)
        self.num_batches_tracked += 1

    def _eval_forward(self, x: Tensor) -> Tensor:
        # eps is already inside running_std: normalize by it exactly, (x - mu) / sigma
        return F.batch_norm(
            x, self.running_mean, self.running_std.square(), self.weight, self.bias, False, 0.0, 0.0
        )

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        if not self.training:
            return self._eval_forward(x)
        mean, var = batch_stats(x)
        with torch.no_grad():
            batch_std = (var + self.eps).sqrt()
            r_raw = batch_std / self.running_std
            d_raw = (mean - self.running_mean) / self.running_std
            r = r_raw.clamp(1.0 / self.rmax, self.rmax)
            d = d_raw.clamp(-self.dmax, self.dmax)
        if self.track_diagnostics:
            self._record(mean, var, (r != r_raw, d != d_raw))
        y = normalize_with_batch_stats(
            x, self.weight * r, torch.addcmul(self.bias, self.weight, d), mean, var, self.eps
        )
        self.update_running(mean, var, values_per_channel(x))
        return y


class _BatchIndependentNorm(nn.Module):
    """Marker base: normalizations whose output for one example ignores the rest of the batch."""


class GroupNorm(nn.GroupNorm, _BatchIndependentNorm):
    """Group normalization (Wu & He 2018): stats per example over groups of channels (+ spatial)."""

    def __init__(self, num_features: int, groups: int = 32, eps: float = 1e-5) -> None:
        if int(groups) < 1 or num_features % int(groups) != 0:
            raise ValueError(
                f"groups must be >= 1 and divide num_features={num_features}, got {groups}"
            )
        super().__init__(int(groups), num_features, eps=_check_positive("eps", eps))


class LayerNorm(GroupNorm):
    """Layer normalization over channels and spatial dims of each example (GroupNorm, 1 group)."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__(num_features, groups=1, eps=eps)


class Identity(nn.Identity, _BatchIndependentNorm):
    """No normalization."""

    def __init__(self, num_features: int) -> None:
        super().__init__()


_BUILDERS: dict[str, tuple[Callable[..., nn.Module], tuple[str, ...]]] = {
    "batch": (BatchNorm, ("eps", "momentum")),
    "moving_average": (MovingAverageNorm, ("eps", "momentum", "update", "grad_through_batch")),
    "renorm": (BatchRenorm, ("eps", "momentum", "rmax", "dmax")),
    "group": (GroupNorm, ("eps", "groups")),
    "layer": (LayerNorm, ("eps",)),
    "none": (Identity, ()),
}
OPTIONS = ("eps", "momentum", "rmax", "dmax", "update", "grad_through_batch", "groups")


def build_norm(mode: str, num_features: int, **options: object) -> nn.Module:
    """Build the normalization layer for ``mode`` over ``num_features`` channels.

    ``options`` may hold any of :data:`OPTIONS`; those a mode does not use are ignored, so one
    option set serves a whole sweep. Unknown modes, unknown options and invalid values raise
    ``ValueError`` naming the argument.
    """
    if mode not in _BUILDERS:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"unknown norm option(s) {unknown}; allowed: {OPTIONS}")
    _validate_options(options)
    cls, used = _BUILDERS[mode]
    return cls(num_features, **{k: v for k, v in options.items() if k in used and v is not None})


def _validate_options(options: dict[str, object]) -> None:
    """Check every given option, used by the mode or not, so a bad value never passes silently."""
    value = options.get("momentum")
    if value is not None:
        _check_unit_interval("momentum", value)
    if options.get("eps") is not None:
        _check_positive("eps", options["eps"])
    if options.get("rmax") is not None and not float(options["rmax"]) >= 1.0:
        raise ValueError(f"rmax must be >= 1, got {options['rmax']!r}")
    if options.get("dmax") is not None and not float(options["dmax"]) >= 0.0:
        raise ValueError(f"dmax must be >= 0, got {options['dmax']!r}")
    if options.get("update") is not None and options["update"] not in UPDATE_ORDERS:
        raise ValueError(f"update must be one of {UPDATE_ORDERS}, got {options['update']!r}")
    if options.get("groups") is not None and not int(options["groups"]) >= 1:
        raise ValueError(f"groups must be >= 1, got {options['groups']!r}")


def norm_layers(model: nn.Module) -> dict[str, _RunningStatsNorm]:
    """The batch-dependent normalization layers of ``model`` by module name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, _RunningStatsNorm)}


def is_batch_dependent(module: nn.Module) -> bool:
    return isinstance(module, _RunningStatsNorm)
