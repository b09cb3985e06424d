"""What a running-statistics layer records each training step, kept on its device."""

from __future__ import annotations

import torch
from torch import Tensor

from normlab.norms import kernels


class NormDiagnostics:
    """Per-channel statistics a layer records each training step, accumulated on its device.

    Recorded per step: ``mean_shift = |mu_B - mu| / sigma`` and ``std_ratio = sigma_B / sigma``
    (mu, sigma: the population estimates *before* this step's update; sigma includes eps), the
    mean and RMS of the layer's input and the RMS over channels of its batch mean
    (``prenorm_mean_rms``: how far the pre-norm mean has drifted from 0), all derived from the
    batch stats with no extra pass over the data, and, for a layer that clips corrections, the
    fraction of channels clipped per field of its ``clip_fields`` (renorm's r and d). Nothing
    is copied to the host until :meth:`collect`, so recording costs no device sync.

    Each step only writes its raw statistics into one row of a preallocated buffer
    (:meth:`slot`, filled by the layer or by :meth:`record`); the ratios above are computed for
    up to :attr:`FOLD_EVERY` steps at once when the window is read or the buffer fills, so that
    the per-step cost stays one small op instead of a dozen. On CPU the fold is one compiled op
    (:func:`normlab.norms.kernels.fold_diagnostics`) where ``compiled`` is on (the layer's
    ``compiled_step`` sets it); otherwise :meth:`_fold_with_pytorch`, the same equations.
    """

    CHANNEL_FIELDS = ("mean_shift", "std_ratio")
    SCALAR_FIELDS = ("prenorm_mean", "prenorm_rms", "prenorm_mean_rms")
    # rows of one step's raw record; a clipping layer adds a row per clip field (1: clipped)
    RAW_ROWS = ("batch_mean", "batch_var", "ref_mean", "ref_std")
    FOLD_EVERY = 64

    def __init__(self, num_features: int, clip_fields: tuple[str, ...] = ()) -> None:
        self.num_features = num_features
        self.clip_fields = tuple(clip_fields)
        self.fields = self.SCALAR_FIELDS + self.clip_fields
        self.rows = len(self.RAW_ROWS) + len(self.clip_fields)
        self._buffer: Tensor | None = None
        self._slots: tuple[Tensor, ...] = ()
        self._like: Tensor | None = None
        self.compiled = kernels.ENABLED
        self.reset()

    def reset(self) -> None:
        self.steps = 0
        self._channel_sums: Tensor | None = None
        self._scalar_sums: Tensor | None = None
        self._pending = 0  # steps recorded in the buffer and not yet folded
        self._pending_eps = 0.0

    def current_batch_mean(self) -> Tensor | None:
        """The batch mean of the step recorded last, if it is not folded yet."""
        return self._slots[self._pending - 1][0] if self._pending else None

    def slot(self, like: Tensor, eps: float) -> Tensor:
        """This step's raw record, ``(rows, C)`` with ``like``'s dtype and device, for the layer
        to fill with the rows :data:`RAW_ROWS` (``ref_*``: mu and sigma before this step's
        update; ``batch_var`` biased) and, for a clipping layer, one clip indicator per clip
        field.

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
            if self._channel_sums is not None:  # the open window's sums move along
                self._channel_sums = self._channel_sums.to(like)
                self._scalar_sums = self._scalar_sums.to(like)
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
        clipped: tuple[Tensor, ...] = (),
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
        self._add_raw(self._buffer[: self._pending], self._pending_eps)
        self._pending = 0

    @torch.no_grad()
    def add_steps(self, raw: Tensor, eps: float) -> None:
        """Take in steps recorded elsewhere: ``raw`` holds one ``(rows, C)`` record per step, as
        :meth:`slot` lays them out (a packed layer's records, one seed's channels)."""
        self._fold()
        self._add_raw(raw, eps)
        self.steps += len(raw)

    def _add_raw(self, raw: Tensor, eps: float) -> None:
        if self._channel_sums is None:
            self._channel_sums = raw.new_zeros((len(self.CHANNEL_FIELDS), self.num_features))
            self._scalar_sums = raw.new_zeros(len(self.fields))
        if self.compiled and kernels.folds(raw):
            kernels.fold_diagnostics(raw, eps, self._channel_sums, self._scalar_sums)
        else:
            self._fold_with_pytorch(raw, eps)

    def _fold_with_pytorch(self, raw: Tensor, eps: float) -> None:
        batch_mean, batch_var, ref_mean, ref_std = raw[:, : len(self.RAW_ROWS)].unbind(1)
        mean_shift = (batch_mean - ref_mean).abs_().div_(ref_std)
        std_ratio = (batch_var + eps).sqrt_().div_(ref_std)
        self._channel_sums += torch.stack((mean_shift, std_ratio), dim=1).sum(dim=0)
        rms = (batch_var + batch_mean.square()).mean(dim=-1).sqrt_()
        mean_rms = batch_mean.square().mean(dim=-1).sqrt_()
        scalars = [batch_mean.mean(dim=-1), rms, mean_rms]
        if self.clip_fields:
            scalars.extend(raw[:, len(self.RAW_ROWS) :].mean(dim=-1).unbind(1))
        self._scalar_sums += torch.stack(scalars, dim=1).sum(dim=0)

    def state_dict(self) -> dict[str, object]:
        """The open window (step count and sums), for checkpoints; tensors stay on device."""
        self._fold()
        return {
            "steps": self.steps,
            "channel_sums": self._channel_sums,
            "scalar_sums": self._scalar_sums,
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.reset()
        self.steps = int(state["steps"])
        self._channel_sums, self._scalar_sums = state["channel_sums"], state["scalar_sums"]

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
