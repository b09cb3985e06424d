"""``online``: Online Normalization (Chiley et al., NeurIPS 2019, arXiv 1905.05894)."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from normlab.norms import kernels
from normlab.norms.base import RunningStatsNorm, Scheduled
from normlab.norms.options import open_interval, option, positive
from normlab.norms.registry import Mode, register


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


class OnlineNorm(RunningStatsNorm):
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

    On CPU, the training step is one compiled op (:mod:`normlab.norms.kernels`: the recurrences
    sample by sample, vectorized over channels, in forward and backward; the tests run both
    paths against the same references).
    """

    schedules: ClassVar[dict[str, Scheduled]] = {}  # statistics decay per sample (alpha_fwd)
    records_diagnostics = True
    channel_separable = True

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

    def train_forward(self, x: Tensor) -> Tensor:
        if kernels.applies(x, self):
            return kernels.online_step(self, x)
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

    @torch.no_grad()
    def absorb(self, x: Tensor, mean: Tensor, var: Tensor) -> None:
        """The training step's per-sample recurrence (``alpha_fwd``), not a per-batch EMA."""
        samples = x.reshape(x.shape[0], x.shape[1], -1).contiguous()
        sample_mean, sample_var, _ = _per_sample_moments(samples)
        self._streaming_stats(sample_mean, sample_var, record=False)

    def _streaming_stats(
        self, sample_mean: Tensor, sample_var: Tensor, record: bool = True
    ) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor]]:
        """Per sample (N, C): the mean and variance used, and the mean and mean square of y.
        Updates the running buffers to the state after the last sample; ``record``: the
        batch's diagnostics too."""
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
        if record and self.track_diagnostics:
            batch_mean = sample_mean.mean(dim=0)
            batch_var = sample_var.mean(dim=0) + (sample_mean - batch_mean).square().mean(dim=0)
            self._record(batch_mean, batch_var)
        self.running_mean.copy_(means[-1])
        self.running_var.copy_(variances[-1])
        self.num_batches_tracked += 1
        return mean_used, var_used, (y_mean, y_sq_mean)


@dataclass(frozen=True)
class OnlineOptions:
    eps: float = option(1e-5, positive)
    alpha_fwd: float = option(0.999, open_interval(0.0, 1.0))
    alpha_bkw: float = option(0.99, open_interval(0.0, 1.0))


MODE = register(
    Mode(
        name="online",
        layer=OnlineNorm,
        options=OnlineOptions,
    )
)
