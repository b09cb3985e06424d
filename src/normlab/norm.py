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
* On CPU, the training steps of ``moving_average`` (with ``grad_through_batch=False``) and
  ``renorm`` run as one compiled op each (:mod:`normlab.kernels`, same equations; the tests run
  both paths); ``compiled_step = False`` on a layer, or ``NORMLAB_KERNELS=off``, keeps the
  pure-PyTorch path.
* ``online`` is the exception to the first two points: its statistics are updated sample by
  sample with the paper's decay ``alpha_fwd`` (``momentum`` is ignored, except that 0 freezes
  them), and ``running_var`` is its streaming variance estimate; see :class:`OnlineNorm`.

References: Ioffe & Szegedy 2015 (arXiv 1502.03167); Ioffe 2017, Batch Renormalization
(arXiv 1702.03275), Algorithm 1; Chiley et al. 2019, Online Normalization (arXiv 1905.05894);
Wu & He 2018, Group Normalization (arXiv 1803.08494).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normlab import kernels

MODES = ("batch", "moving_average", "renorm", "online", "group", "layer", "none")
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
    """Per-channel mean and biased variance of ``x``, outside autograd.

    On CPU with spatial dims, two passes (the mean, then the squared deviations from it, so no
    ``E[x^2] - E[x]^2`` cancellation): the fused native kernel reduces an NCHW tensor over
    (N, H, W) several times slower. Elsewhere (``(N, C)`` inputs, CUDA) the fused native kernel
    is the faster one.
    """
    with torch.no_grad():
        if x.dim() > 2 and x.device.type == "cpu":
            return _two_pass_stats(x)
        return torch.batch_norm_update_stats(x, None, None, 0.0)


def _two_pass_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    mean, var, _ = _two_pass_stats_keeping_centered(x)
    return mean, var


def _two_pass_stats_keeping_centered(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Mean, biased variance and ``x - mean`` (for reuse as an output buffer)."""
    n, c = x.shape[:2]
    count = values_per_channel(x)
    mean = x.sum(dim=reduction_dims(x)).div_(count)
    centered = x - _channel_view(mean, x)
    if centered.is_contiguous():
        # norms of the (sample, channel) rows: no full-size temporary for the squares
        row_norms = torch.linalg.vector_norm(centered.view(n * c, -1), dim=1)
        var = row_norms.square_().view(n, c).sum(dim=0)
    else:
        var = centered.square().sum(dim=reduction_dims(x))
    return mean, var.div_(count), centered


def unbiased(var: Tensor, n: int) -> Tensor:
    return var * (n / (n - 1))


def _channel_view(t: Tensor, x: Tensor) -> Tensor:
    """``t`` (C,) as ``(C, 1, ..., 1)``, to broadcast against ``x`` per channel.

    No leading batch dim, on purpose: with a ``(1, C, 1, ...)`` view and an input with one value
    per channel, the gradient of a parameter passed through it would be a view of the caller's
    ``grad_out``, which autograd keeps as ``.grad`` and later accumulates into in place,
    overwriting the caller's tensor. Broadcasting over N makes that gradient a fresh sum.
    """
    return t.view(-1, *([1] * (x.dim() - 2)))


class _NormalizeWithBatchStats(torch.autograd.Function):
    """``weight * (x - mean) * invstd + bias`` where ``mean``/``var`` are ``x``'s own batch stats.

    The stats come in precomputed (they are needed earlier, e.g. for renorm's r and d), so the
    forward is one elementwise pass of the native kernel, and the backward is PyTorch's own
    training-mode batch-norm backward: the gradient flows through the batch statistics exactly as
    in ``F.batch_norm(training=True)``. Works with one value per channel, where the native
    training forward refuses.
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
        return centered.mul_(_channel_view(gain, x)).add_(_channel_view(bias, x))

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


class NormDiagnostics:
    """Per-channel statistics a layer records each training step, accumulated on its device.

    Recorded per step: ``mean_shift = |mu_B - mu| / sigma`` and ``std_ratio = sigma_B / sigma``
    (mu, sigma: the population estimates *before* this step's update; sigma includes eps), the
    mean and RMS of the layer's input (derived from the batch stats, no extra pass over the
    data) and, for renorm, the fractions of channels whose r or d was clipped. Nothing is copied
    to the host until :meth:`collect`, so recording costs no device sync.

    Each step only writes its raw statistics into one row of a preallocated buffer
    (:meth:`slot`, filled by the layer or by :meth:`record`); the ratios above are computed for
    up to :attr:`FOLD_EVERY` steps at once when the window is read or the buffer fills, so that
    the per-step cost stays one small op instead of a dozen.
    """

    CHANNEL_FIELDS = ("mean_shift", "std_ratio")
    SCALAR_FIELDS = ("prenorm_mean", "prenorm_rms")
    CLIP_FIELDS = ("r_clip_frac", "d_clip_frac")
    # rows of one step's raw record; renorm adds one row per CLIP_FIELDS entry (1 = clipped)
    RAW_ROWS = ("batch_mean", "batch_var", "ref_mean", "ref_std")
    FOLD_EVERY = 64

    def __init__(self, num_features: int, with_clipping: bool = False) -> None:
        self.num_features = num_features
        self.with_clipping = with_clipping
        self.fields = self.SCALAR_FIELDS + (self.CLIP_FIELDS if with_clipping else ())
        self.rows = len(self.RAW_ROWS) + (len(self.CLIP_FIELDS) if with_clipping else 0)
        self._buffer: Tensor | None = None
        self._slots: tuple[Tensor, ...] = ()
        self._like: Tensor | None = None
        self.reset()

    def reset(self) -> None:
        self.steps = 0
        self._channel_sums: Tensor | None = None
        self._scalar_sums: Tensor | None = None
        self._last: Tensor | None = None
        self._pending = 0  # steps recorded in the buffer and not yet folded
        self._pending_eps = 0.0

    @property
    def last_mean_shift(self) -> Tensor | None:
        self._fold()
        return None if self._last is None else self._last[0]

    @property
    def last_std_ratio(self) -> Tensor | None:
        self._fold()
        return None if self._last is None else self._last[1]

    def slot(self, like: Tensor, eps: float) -> Tensor:
        """This step's raw record, ``(rows, C)`` with ``like``'s dtype and device, for the layer
        to fill with the rows :data:`RAW_ROWS` (``ref_*``: mu and sigma before this step's
        update; ``batch_var`` biased) and, for renorm, the r and d clip indicators.

        ``like`` is the layer's running mean: while it is the same tensor object as at the last
        call, the buffer still fits (moving a module to another device or dtype replaces it).
        """
        if like is not self._like:
            self._fit_buffer(like)
        if self._pending and (self._pending == self.FOLD_EVERY or eps != self._pending_eps):
            self._fold()
        self._pending_eps = eps
        self.steps += 1
        self._pending += 1
        return self._slots[self._pending - 1]

    def _fit_buffer(self, like: Tensor) -> None:
        buffer = self._buffer
        if buffer is None or buffer.dtype != like.dtype or buffer.device != like.device:
            self._fold()
            buffer = like.new_empty((self.FOLD_EVERY, self.rows, self.num_features))
            self._buffer, self._slots = buffer, buffer.unbind(0)  # views made once, not per step
        self._like = like

    def record(
        self,
        batch_mean: Tensor,
        batch_var: Tensor,
        ref_mean: Tensor,
        ref_std: Tensor,
        eps: float,
        clipped: tuple[Tensor, Tensor] = (),
    ) -> None:
        """Write one step's record from separate tensors (none may require grad)."""
        rows = (
            batch_mean,
            batch_var,
            ref_mean,
            ref_std,
            *(c.to(batch_mean.dtype) for c in clipped),
        )
        torch.stack(rows, out=self.slot(batch_mean, eps))

    @torch.no_grad()
    def _fold(self) -> None:
        """Turn the pending raw records into per-step diagnostics and add them to the sums."""
        if not self._pending:
            return
        raw = self._buffer[: self._pending]
        batch_mean, batch_var, ref_mean, ref_std = raw[:, : len(self.RAW_ROWS)].unbind(1)
        mean_shift = (batch_mean - ref_mean).abs_().div_(ref_std)
        std_ratio = (batch_var + self._pending_eps).sqrt_().div_(ref_std)
        channels = torch.stack((mean_shift, std_ratio), dim=1)  # (steps, 2, C)
        rms = (batch_var + batch_mean.square()).mean(dim=-1).sqrt_()
        scalars = [batch_mean.mean(dim=-1), rms]
        if self.with_clipping:
            scalars.extend(raw[:, len(self.RAW_ROWS) :].mean(dim=-1).unbind(1))
        channel_sums, scalar_sums = channels.sum(dim=0), torch.stack(scalars, dim=1).sum(dim=0)
        if self._channel_sums is None:
            self._channel_sums, self._scalar_sums = channel_sums, scalar_sums
        else:
            self._channel_sums += channel_sums
            self._scalar_sums += scalar_sums
        self._last = channels[-1]
        self._pending = 0

    def state_dict(self) -> dict[str, object]:
        """The open window (step count and sums), for checkpoints; tensors stay on device."""
        self._fold()
        return {
            "steps": self.steps,
            "channel_sums": self._channel_sums,
            "scalar_sums": self._scalar_sums,
            "last": self._last,
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.reset()
        self.steps = int(state["steps"])
        self._channel_sums, self._scalar_sums = state["channel_sums"], state["scalar_sums"]
        self._last = state["last"]

    def per_channel(self) -> dict[str, Tensor]:
        """Per-channel means of ``mean_shift`` and ``std_ratio`` since the last reset."""
        if self.steps == 0:
            return {}
        self._fold()
        return dict(zip(self.CHANNEL_FIELDS, self._channel_sums / self.steps, strict=True))

    def collect(self, reset: bool = True) -> dict[str, float]:
        """Means over steps (and channels) since the last collect, in one host sync."""
        if self.steps == 0:
            return {}
        self._fold()
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
        # moving_average and renorm: run the training step as one compiled CPU op where it
        # applies (normlab.kernels); False keeps the pure-PyTorch path, which is otherwise
        # used on GPU and wherever the extension cannot be built
        self.compiled_step = kernels.ENABLED
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

    def _eval_forward(self, x: Tensor) -> Tensor:
        mean, var = self.population_stats()
        return F.batch_norm(x, mean, var, self.weight, self.bias, False, 0.0, self.eps)


class BatchNorm(_RunningStatsNorm):
    """Standard batch normalization (Ioffe & Szegedy 2015, Algorithm 1).

    Train: normalize with the batch mean and biased variance; gradients flow through them. The
    running buffers follow ``torch.nn.BatchNorm`` (unbiased variance). Eval: running stats.

    ``virtual_batch_size`` (ghost batch norm, Hoffer et al. 2017, arXiv 1705.08741): the batch
    is split into consecutive sub-batches of that size, each normalized with its own statistics
    (and gradients through them), so the statistics' batch size is separated from the
    optimizer's. The running buffers take one EMA step per batch with the sub-batches' average
    mean and average unbiased variance.
    """

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

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        if not self.training:
            return self._eval_forward(x)
        ghost = self.virtual_batch_size
        if ghost is not None and ghost < x.shape[0]:
            return self._ghost_forward(x, ghost)
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
        if not self.grad_through_batch and kernels.applies(x, self):
            return kernels.moving_average_step(self, x)
        n = values_per_channel(x)
        mean, var = batch_stats(x)
        self._record(mean, var)
        if self.grad_through_batch:
            return self._forward_through_batch(x, n)
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
        m = self.momentum
        # plain sums, differentiable: x.var over (N, H, W) of an NCHW tensor is slow on CPU
        batch_mean = x.sum(dim=dims) / n
        used_mean = (1 - m) * self.running_mean + m * batch_mean
        if n > 1:
            batch_var = (x - _channel_view(batch_mean, x)).square().sum(dim=dims) / (n - 1)
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

    r and d are folded into the affine of the normalization (``weight * r``, ``weight * d + bias``)
    instead of composing elementwise ops: on CPU the whole step (statistics, r and d, running
    updates, diagnostics, output) is one compiled op (:mod:`normlab.kernels`), elsewhere one
    fused batch-norm kernel after a few per-channel ops.

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
        self._update_running_std(mean, (var + self.eps).sqrt())

    def _update_running_std(self, mean: Tensor, batch_std: Tensor) -> None:
        self.running_mean.lerp_(mean, self.momentum)
        self.running_std.lerp_(batch_std, self.momentum)
        self.num_batches_tracked += 1

    def _eval_forward(self, x: Tensor) -> Tensor:
        # (x - mu) / sigma with eps already inside running_std: the kernel adds eps back to
        # sigma^2 - eps (torch < 2.13 refuses eps = 0)
        variance = self.running_std.square().sub_(self.eps)
        return F.batch_norm(
            x, self.running_mean, variance, self.weight, self.bias, False, 0.0, self.eps
        )

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        if not self.training:
            return self._eval_forward(x)
        if kernels.applies(x, self):
            return kernels.renorm_step(self, x)
        with torch.no_grad():
            # one value per channel: normalizing the centered zeros keeps x_hat exactly d
            if (x.dim() > 2 and x.device.type == "cpu") or values_per_channel(x) == 1:
                mean, var, centered = _two_pass_stats_keeping_centered(x)
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


def _check_open_unit_interval(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be in (0, 1) (a decay factor), got {value}")
    return value


def linear_scan(coef: Tensor | float, b: Tensor) -> Tensor:
    """All ``h_t = coef_t * h_{t-1} + b_t`` along dim 0, starting from ``h_0 = b_0``.

    Put a known initial state in as ``b_0`` (``coef_0`` is never read). ``coef`` is one float for
    every step, or a tensor shaped like ``b``. A recurrence over N samples costs a few
    whole-tensor ops instead of N small ones. For a constant ``a``, the closed form
    ``h_t = a^t * cumsum_k(a^-k * b_k)``, in chunks short enough that ``a^-t`` stays below 2**64;
    its rounding is that of the sequential recurrence (each term's error scales with its weight
    ``a^(t-k)``). Otherwise :func:`_varying_scan`.
    """
    if isinstance(coef, Tensor):
        return _varying_scan(coef, b)
    chunk = _decay_chunk_length(coef)
    out = []
    for start in range(0, len(b), chunk):
        part = b[start : start + chunk]
        grow, decay = _decay_powers(coef, len(part), b.dtype, b.device)
        h = torch.cumsum(part * grow, dim=0).mul_(decay)
        if out:
            h.addcmul_(decay * coef, out[-1][-1:])
        out.append(h)
    return out[0] if len(out) == 1 else torch.cat(out)


def _decay_chunk_length(decay: float) -> int:
    """Steps over which ``decay ** -t`` stays below 2**64 (no overflow, even in float32)."""
    if decay >= 1.0:
        return 1 << 62
    if decay <= 0.0:
        return 1
    return max(1, int(64 / math.log2(1 / decay)))


@functools.lru_cache(maxsize=32)
def _decay_powers(decay: float, n: int, dtype: torch.dtype, device: torch.device):
    """``decay ** -t`` and ``decay ** t`` for t < n, as (n, 1) columns."""
    t = torch.arange(n, dtype=torch.float64, device=device).unsqueeze(1)
    return (decay**-t).to(dtype), (decay**t).to(dtype)


def _varying_scan(coef: Tensor, b: Tensor) -> Tensor:
    """Hillis-Steele scan: log2(N) rounds, each combining every step with the one 2**k back;
    only products of coefficients, nothing divided (they may be 0 or negative).

    The two ping-pong buffers start with ``pad`` rows of identity (h = 0, coef = 1), so a step
    with nothing 2**k back combines with the identity and every round is one op over all rows.
    """
    n = len(b)
    if n == 1:
        return b
    pad = 1 << (n - 1).bit_length() - 1  # the longest reach, 2**k < n
    h = [b.new_zeros(pad + n, *b.shape[1:]) for _ in range(2)]
    c = [b.new_ones(pad + n, *b.shape[1:]) for _ in range(2)]
    h[0][pad:], c[0][pad:] = b, coef
    step, cur = 1, 0
    while step < n:
        back = slice(pad - step, pad - step + n)
        torch.addcmul(h[cur][pad:], c[cur][pad:], h[cur][back], out=h[1 - cur][pad:])
        if 2 * step < n:
            torch.mul(c[cur][pad:], c[cur][back], out=c[1 - cur][pad:])
        step, cur = 2 * step, 1 - cur
    return h[cur][pad:]


def _with_initial(h0: Tensor, b: Tensor) -> Tensor:
    return torch.cat((h0.unsqueeze(0), b))


def _per_sample_moments(x: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
    """Mean and biased variance over ``L`` of each sample and channel of a contiguous
    ``(N, C, L)``, and the centered ``x`` (for reuse as an output buffer; None if ``L == 1``)."""
    n, c, length = x.shape
    if length == 1:
        mean = x[:, :, 0]
        return mean, torch.zeros_like(mean), None
    mean = x.sum(dim=2).div_(length)
    centered = x - mean.unsqueeze(2)
    row_norms = torch.linalg.vector_norm(centered.view(n * c, length), dim=1)
    return mean, row_norms.square_().view(n, c).div_(length), centered


class _OnlineNormalize(torch.autograd.Function):
    """``weight * y_t + bias`` with ``y_t = (x_t - mu_{t-1}) / s_{t-1}``, per sample, and the
    control-process backward.

    Forward: the streaming statistics come in precomputed per sample and channel, and the
    output is written in place into ``x - mu(x_t)`` (already computed for the sample variances),
    so no new full-size buffer. Backward: Online Normalization's gradient (Chiley et al. 2019;
    reference ``norm_bwd``) applied to ``g_t``, the gradient with respect to ``y_t``
    (``weight * grad_out``: the affine comes after the normalization, as in the reference),
    sample by sample, ``<.>`` the mean over one sample's values of one channel,
    ``k = 1 - alpha_bkw``::

        g~_t = g_t - k * v_{t-1} * y_t          v_t = v_{t-1} + <g~_t * y_t>
        dx_t = g~_t / s_{t-1} - k * u_{t-1}     u_t = u_{t-1} + <dx_t>

    ``v`` and ``u`` (the paper's eps^(y) and eps^(1)) carry over between batches in
    ``ctrl_proj``/``ctrl_mean``, updated in place. With ``A_t = <g_t y_t>``, ``Q_t = <y_t^2>``,
    ``G_t = <g_t>``, ``Y_t = <y_t>`` the two recursions are linear in (v, u):
    ``v_t = (1 - k Q_t) v_{t-1} + A_t`` and ``u_t = alpha_bkw u_{t-1} + (G_t - k v_{t-1} Y_t)/s``,
    so they run as scans over (N, C) and only whole-batch passes touch (N, C, L).

    Viewed as ``(1, N * C, L)``, every sample-channel pair is a channel of its own, so native
    batch-norm kernels do the per-sample work: the training backward's weight/bias gradients give
    ``sum grad_out * y`` and ``sum grad_out`` in one pass over ``x``, and ``dx`` is one eval-mode
    pass plus a multiply-add. The affine is applied after the normalization, as in the reference
    (weight and bias get their plain gradients, the control process sees ``weight * grad_out``),
    but inside this Function: computed outside, it would add three full-size tensors per step
    (output, ``grad_out * weight``, ``grad_out * y``), and on CPU each fresh one costs page
    faults. ``x`` is saved, not ``y``.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, mean_used, var_used, y_stats, ctrl, alpha_bkw, eps, centered):
        ctx.save_for_backward(x, weight, mean_used, var_used, *y_stats)
        ctx.ctrl, ctx.alpha_bkw, ctx.eps = ctrl, alpha_bkw, eps
        if centered is None:
            return _per_sample_affine(x, mean_used, var_used, weight, bias, eps)
        # x - mu(x_t), already computed for the sample variances, becomes the output:
        # weight * y + bias = centered * weight / s + (weight * <y> + bias)
        ctx.mark_dirty(centered)
        gain = torch.rsqrt(var_used + eps).mul_(weight)
        shift = torch.addcmul(bias, y_stats[0], weight)
        return centered.mul_(gain.unsqueeze(2)).add_(shift.unsqueeze(2))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x, weight, mean_used, var_used, y_mean, y_sq_mean = ctx.saved_tensors
        (ctrl_mean, ctrl_proj), alpha_bkw, eps = ctx.ctrl, ctx.alpha_bkw, ctx.eps
        k = 1.0 - alpha_bkw
        inv_std = torch.rsqrt(var_used + eps)
        grad_out = grad_out.contiguous()
        sum_gy, sum_g = _per_sample_sums(grad_out, x, mean_used, inv_std)
        scale = weight / x.shape[2]  # turns sums of grad_out into means of g = weight * grad_out
        # v_{t-1} and u_{t-1} for every sample t, then the state after the batch
        v = linear_scan(
            _with_initial(torch.ones_like(ctrl_proj), 1.0 - k * y_sq_mean),
            _with_initial(ctrl_proj, sum_gy * scale),
        )
        v_used = v[:-1]
        u = linear_scan(
            alpha_bkw,
            _with_initial(ctrl_mean, (sum_g * scale - k * v_used * y_mean).mul_(inv_std)),
        )
        ctrl_proj.copy_(v[-1])
        ctrl_mean.copy_(u[-1])
        # dx = (weight * grad_out - k v y) / s - k u; the y and constant terms in one pass
        grad_x = _per_sample_affine(x, mean_used, var_used, -k * v_used * inv_std, -k * u[:-1], eps)
        grad_x.addcmul_(grad_out, (weight * inv_std).unsqueeze(2))
        grad_weight = sum_gy.sum(dim=0) if ctx.needs_input_grad[1] else None
        grad_bias = sum_g.sum(dim=0) if ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias, None, None, None, None, None, None, None


def _per_sample_affine(
    x: Tensor, mean: Tensor, var: Tensor, weight: Tensor, bias: Tensor, eps: float
) -> Tensor:
    """``weight * (x - mean) / sqrt(var + eps) + bias`` on ``(N, C, L)``, with ``mean``/``var``
    per sample and channel ``(N, C)`` and ``weight``/``bias`` broadcastable to ``(N, C)``."""
    n, c, length = x.shape
    if length == 1:
        scale = torch.rsqrt(var + eps).mul_(weight)
        return torch.addcmul(bias, x[:, :, 0] - mean, scale).unsqueeze(2)
    return F.batch_norm(
        x.reshape(1, n * c, length),
        mean.reshape(-1),
        var.reshape(-1),
        weight.expand(n, c).reshape(-1),
        bias.expand(n, c).reshape(-1),
        False,
        0.0,
        eps,
    ).view(n, c, length)


def _per_sample_sums(
    grad_out: Tensor, x: Tensor, mean: Tensor, inv_std: Tensor
) -> tuple[Tensor, Tensor]:
    """``sum_l grad_out * y`` and ``sum_l grad_out`` per sample and channel, with
    ``y = (x - mean) * inv_std``; one fused pass (the weight/bias gradients of a training-mode
    batch-norm backward on the ``(1, N * C, L)`` view)."""
    n, c, length = x.shape
    if length == 1:
        grad_out = grad_out[:, :, 0]
        return grad_out * (x[:, :, 0] - mean).mul_(inv_std), grad_out
    ones = torch.ones_like(inv_std).view(-1)  # the CUDA kernel wants a weight
    _, sum_gy, sum_g = torch.ops.aten.native_batch_norm_backward(
        grad_out.view(1, n * c, length),
        x.reshape(1, n * c, length),
        ones,
        None,
        None,
        mean.reshape(-1),
        inv_std.reshape(-1),
        True,
        0.0,
        [False, True, True],
    )
    return sum_gy.view(n, c), sum_g.view(n, c)


class OnlineNorm(_RunningStatsNorm):
    """Online Normalization (Chiley et al., NeurIPS 2019, arXiv 1905.05894), without its
    optional error-compensation layer (activation clamping / layer scaling).

    Samples are processed one after another, in batch order, as if they arrived one at a time;
    per channel, ``mu(x_t)``/``var(x_t)`` are sample ``t``'s mean and biased variance over its
    spatial values, ``s_t = sqrt(var_t + eps)``, ``a = alpha_fwd``::

        y_t    = (x_t - mu_{t-1}) / s_{t-1}
        mu_t   = a mu_{t-1} + (1 - a) mu(x_t)
        var_t  = a var_{t-1} + (1 - a) var(x_t) + a (1 - a) (mu(x_t) - mu_{t-1})^2

    (the paper's forward equations, §2, and its reference ``Norm2d``/``norm_fwd``). The
    statistics are constants to autograd; the gradient instead goes through the paper's control
    process (see :class:`_OnlineNormalize`), with decay ``alpha_bkw``. The output is
    ``weight * y + bias``: as in the reference implementation the affine comes after the
    normalization, so the control process acts on the gradient with respect to ``y``.
    ``alpha_fwd``/``alpha_bkw`` must lie in (0, 1); defaults are the paper's.

    Batch-size invariant: N batches of one sample give the same outputs, input gradients and
    buffers as one batch of N (forward and backward called once per batch, in order).
    ``(N, C)`` inputs have one value per sample and feature, so ``mu(x_t) = x_t``,
    ``var(x_t) = 0``: each feature is normalized over the time (sample) axis only, the paper's
    fully connected case and what the reference's 1d kernel computes.

    Buffers: ``running_mean``/``running_var`` are mu, var (the paper initializes them at 0 and 1,
    as here), used unchanged in eval; ``ctrl_mean``/``ctrl_proj`` are the backward control
    variables (``u``/``v`` in the reference). ``momentum``: the statistics decay *per sample*
    with ``alpha_fwd``, a different unit from the per-batch momentum of the other layers, so a
    trainer's momentum schedule does not touch them, with one exception: ``momentum = 0`` means
    "absorb nothing" here too and freezes mu and var (what precise-BN recalibration relies on).
    Diagnostics record the whole batch's mean and variance against mu, var before the batch.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        alpha_fwd: float = 0.999,
        alpha_bkw: float = 0.99,
    ) -> None:
        super().__init__(num_features, eps)
        self.alpha_fwd = alpha_fwd
        self.alpha_bkw = alpha_bkw
        self.register_buffer("ctrl_mean", torch.zeros(num_features))
        self.register_buffer("ctrl_proj", torch.zeros(num_features))

    @property
    def alpha_fwd(self) -> float:
        return self._alpha_fwd

    @alpha_fwd.setter
    def alpha_fwd(self, value: float) -> None:
        self._alpha_fwd = _check_open_unit_interval("alpha_fwd", value)

    @property
    def alpha_bkw(self) -> float:
        return self._alpha_bkw

    @alpha_bkw.setter
    def alpha_bkw(self, value: float) -> None:
        self._alpha_bkw = _check_open_unit_interval("alpha_bkw", value)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, alpha_fwd={self.alpha_fwd}, "
            f"alpha_bkw={self.alpha_bkw}"
        )

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        if not self.training:
            return self._eval_forward(x)
        samples = x.reshape(x.shape[0], x.shape[1], -1).contiguous()
        with torch.no_grad():
            sample_mean, sample_var, centered = _per_sample_moments(samples)
            mean_used, var_used, y_stats = self._streaming_stats(sample_mean, sample_var)
        out = _OnlineNormalize.apply(
            samples,
            self.weight,
            self.bias,
            mean_used,
            var_used,
            y_stats,
            (self.ctrl_mean, self.ctrl_proj),
            self.alpha_bkw,
            self.eps,
            centered,
        )
        return out.view(x.shape)

    def _streaming_stats(
        self, sample_mean: Tensor, sample_var: Tensor
    ) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor]]:
        """Per sample (N, C): the mean and variance used, and the mean and mean square of y.
        Updates the running buffers to the state after the last sample."""
        a = 1.0 if self.momentum == 0 else self.alpha_fwd
        means = linear_scan(a, _with_initial(self.running_mean, (1 - a) * sample_mean))
        mean_used = means[:-1]
        shift = sample_mean - mean_used
        var_increments = (1 - a) * sample_var + (a * (1 - a)) * shift.square()
        variances = linear_scan(a, _with_initial(self.running_var, var_increments))
        var_used = variances[:-1]
        inv_var = torch.reciprocal(var_used + self.eps)
        y_mean = shift * inv_var.sqrt()
        y_sq_mean = (sample_var + shift.square()).mul_(inv_var)
        if self.track_diagnostics:
            batch_mean = sample_mean.mean(dim=0)
            batch_var = sample_var.mean(dim=0) + (sample_mean - batch_mean).square().mean(dim=0)
            self._record(batch_mean, batch_var)
        self.running_mean.copy_(means[-1])
        self.running_var.copy_(variances[-1])
        self.num_batches_tracked += 1
        return mean_used, var_used, (y_mean, y_sq_mean)


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
    "batch": (BatchNorm, ("eps", "momentum", "virtual_batch_size")),
    "moving_average": (MovingAverageNorm, ("eps", "momentum", "update", "grad_through_batch")),
    "renorm": (BatchRenorm, ("eps", "momentum", "rmax", "dmax")),
    "online": (OnlineNorm, ("eps", "alpha_fwd", "alpha_bkw")),
    "group": (GroupNorm, ("eps", "groups")),
    "layer": (LayerNorm, ("eps",)),
    "none": (Identity, ()),
}
OPTIONS = (
    "eps",
    "momentum",
    "rmax",
    "dmax",
    "update",
    "grad_through_batch",
    "groups",
    "alpha_fwd",
    "alpha_bkw",
    "virtual_batch_size",
)


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
    for key in ("alpha_fwd", "alpha_bkw"):
        if options.get(key) is not None:
            _check_open_unit_interval(key, options[key])
    size = options.get("virtual_batch_size")
    if size is not None and not int(size) >= 1:
        raise ValueError(f"virtual_batch_size must be >= 1, got {size!r}")


def norm_layers(model: nn.Module) -> dict[str, _RunningStatsNorm]:
    """The batch-dependent normalization layers of ``model`` by module name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, _RunningStatsNorm)}


def is_batch_dependent(module: nn.Module) -> bool:
    return isinstance(module, _RunningStatsNorm)
