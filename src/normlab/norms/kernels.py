"""Compiled CPU training steps of the batch, moving_average, renorm and online layers.

``csrc/fused_norm.cpp`` (in :mod:`normlab.extension`) registers two custom operators per mode
with PyTorch's dispatcher (``torch.ops.normlab``): ``<mode>_step``, which returns the output and
what its backward needs and updates the running buffers, the step counter and the diagnostics
record in place (its autograd kernel, a ``torch::autograd::Function``, marks the buffers dirty,
so their version counters move as for an ATen in-place op), and ``<mode>_backward`` (not for
``batch``, whose autograd kernel calls ATen's batch-norm backward); and ``fold_diagnostics``, the
diagnostics' fold (:mod:`normlab.norms.diagnostics`). Statistics, the per-channel algebra (r, d,
clipping, running updates, diagnostics) and the output take one pass each; on small inputs the
pure-PyTorch path spends most of its time dispatching a dozen tiny per-channel ops, which is
what brings those layers to the speed of the native kernel (``scripts/bench_norm.py`` shows both
paths side by side). Eager steps enter through the extension's Python module (pybind11), which
converts the arguments faster than a ``torch.ops`` call; under torch.compile the ops are called,
and the fake (meta) kernels below let them run on fake tensors (``torch.library.opcheck`` too).

Where the extension cannot be built the layers keep their pure-PyTorch path, after one warning.
A layer's ``compiled_step`` attribute chooses per layer; ``NORMLAB_KERNELS=off`` sets its default
to the pure-PyTorch path. Both paths are tested against the same references.
"""

from __future__ import annotations

import functools
from types import ModuleType

import torch
from torch import Tensor, nn

from normlab import extension as compiled

DTYPES = (torch.float32, torch.float64)
ENABLED = compiled.ENABLED


def entries() -> ModuleType | None:
    """The extension's Python module (its norm ops' fake kernels registered), or None where it
    cannot be built."""
    module = compiled.entries()
    if module is not None:
        _register_fake_kernels()
    return module


def extension() -> ModuleType | None:
    """The extension's operators (``torch.ops.normlab``), or None where it cannot be built."""
    return None if entries() is None else torch.ops.normlab


def available_on(device: torch.device) -> bool:
    """Whether layers on ``device`` run the compiled step by default (building it if needed)."""
    return ENABLED and device.type == "cpu" and extension() is not None


def applies(x: Tensor, layer: nn.Module) -> bool:
    """Whether the compiled step serves this input: the layer's ``compiled_step`` switch on, a
    contiguous, non-empty CPU tensor of the layer's own floating dtype, and the extension
    built."""
    return (
        layer.compiled_step
        and x.is_cpu
        and x.dtype in DTYPES
        and x.dtype == layer._parameters["weight"].dtype
        and x.is_contiguous()
        and x.numel() > 0
        and entries() is not None
    )


def _step(name: str, *args: object) -> Tensor:
    """The output of step op ``name``: through the extension's eager entry point (pybind11
    converts the arguments in a fraction of the time of a ``torch.ops`` call), or the op itself
    where torch.compile traces."""
    if torch.compiler.is_compiling():
        return getattr(torch.ops.normlab, name).default(*args)[0]
    return getattr(entries(), name)(*args)


def batch_step(layer: nn.Module, x: Tensor) -> Tensor:
    """One training step of a ``BatchNorm`` without ghost batches."""
    return _step("batch_step", *_step_state(layer, x, "running_var"), layer.diagnostics_slot())


def moving_average_step(layer: nn.Module, x: Tensor) -> Tensor:
    """One training step of a ``MovingAverageNorm`` with ``grad_through_batch=False``."""
    before = layer.update == "before"
    state = _step_state(layer, x, "running_var")
    return _step("moving_average_step", *state, before, layer.diagnostics_slot())


def renorm_step(layer: nn.Module, x: Tensor) -> Tensor:
    """One training step of a ``BatchRenorm``."""
    state = _step_state(layer, x, "running_std")
    return _step("renorm_step", *state, layer.rmax, layer.dmax, layer.diagnostics_slot())


def online_step(layer: nn.Module, x: Tensor) -> Tensor:
    """One training step of an ``OnlineNorm``; its backward runs the control process and updates
    ``ctrl_mean``/``ctrl_proj``. ``momentum == 0`` freezes the statistics (``alpha_fwd = 1``)."""
    params, buffers = layer._parameters, layer._buffers
    return _step(
        "online_step",
        x,
        params["weight"],
        params["bias"],
        buffers["running_mean"],
        buffers["running_var"],
        buffers["ctrl_mean"],
        buffers["ctrl_proj"],
        buffers["num_batches_tracked"],
        1.0 if layer.momentum == 0 else layer.alpha_fwd,
        layer.alpha_bkw,
        layer.eps,
        layer.diagnostics_slot(),
    )


def folds(records: Tensor) -> bool:
    """Whether the compiled fold serves these diagnostics records (CPU, float32/64, built)."""
    return records.is_cpu and records.dtype in DTYPES and extension() is not None


def fold_diagnostics(
    records: Tensor, eps: float, channel_sums: Tensor, scalar_sums: Tensor
) -> None:
    """Add the diagnostics of ``records`` (steps, rows, C) into the sums, in one pass
    (:meth:`normlab.norms.diagnostics.NormDiagnostics.fold` says what they hold)."""
    torch.ops.normlab.fold_diagnostics.default(records, eps, channel_sums, scalar_sums)


def _step_state(layer: nn.Module, x: Tensor, spread: str) -> tuple:
    """The arguments the batch-statistics steps open with: input, affine, running buffers, step
    counter, momentum, eps. Read from the parameter and buffer dicts: nn.Module.__getattr__ costs
    about half a microsecond per name, several percent of a whole step at batch size 1."""
    params, buffers = layer._parameters, layer._buffers
    return (
        x,
        params["weight"],
        params["bias"],
        buffers["running_mean"],
        buffers[spread],
        buffers["num_batches_tracked"],
        layer.momentum,
        layer.eps,
    )


def _fake_step(x: Tensor, saved_rows: int) -> tuple[Tensor, Tensor]:
    """A step's outputs: the output and the per-channel rows saved for backward."""
    return torch.empty_like(x), x.new_empty((saved_rows, x.shape[1]))


def _fake_grads(x: Tensor, weight: Tensor, mask: list[bool]) -> tuple:
    return (
        torch.empty_like(x) if mask[0] else None,
        torch.empty_like(weight) if mask[1] else None,
        torch.empty_like(weight) if mask[2] else None,
    )


@functools.cache
def _register_fake_kernels() -> None:
    """Output shapes and dtypes of every op, for fake tensors (the in-place updates of the
    buffers carry no metadata change)."""
    fake = torch.library.register_fake

    @fake("normlab::batch_step")
    def _(x, weight, bias, running_mean, running_var, count, momentum, eps, record):
        return torch.empty_like(x), weight.new_empty(x.shape[1]), weight.new_empty(x.shape[1])

    @fake("normlab::moving_average_step")
    def _(x, weight, bias, running_mean, running_var, count, momentum, eps, before, record):
        return _fake_step(x, 2)

    @fake("normlab::renorm_step")
    def _(x, weight, bias, running_mean, running_std, count, momentum, eps, rmax, dmax, record):
        return _fake_step(x, 5)

    @fake("normlab::online_step")
    def _(x, weight, bias, mean, var, ctrl_mean, ctrl_proj, count, alpha, alpha_bkw, eps, record):
        # per sample and channel; with one value per sample the backward needs two rows, not four
        rows = 2 if x.numel() == x.shape[0] * x.shape[1] else 4
        return torch.empty_like(x), x.new_empty((rows, x.shape[0], x.shape[1]))

    @fake("normlab::moving_average_backward")
    def _(grad, x, weight, saved, mask):
        return _fake_grads(x, weight, mask)

    @fake("normlab::renorm_backward")
    def _(grad, x, saved, eps, mask):
        return _fake_grads(x, saved[0], mask)

    @fake("normlab::fold_diagnostics")
    def _(records, eps, channel_sums, scalar_sums):
        return None

    @fake("normlab::online_backward")
    def _(grad, x, weight, saved, ctrl_mean, ctrl_proj, alpha_bkw, mask):
        state = torch.empty_like(ctrl_mean), torch.empty_like(ctrl_proj)
        return (*_fake_grads(x, weight, mask), *state)
