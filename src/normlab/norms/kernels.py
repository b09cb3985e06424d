"""Compiled CPU training steps of the ``moving_average`` and ``renorm`` layers.

``csrc/fused_norm.cpp`` does one training step of each layer as one op: statistics, the
per-channel algebra (r, d, clipping, running updates, diagnostics) in one loop, the output in
one pass; backward, ATen's training-mode batch-norm backward for renorm and one pass of its own
for moving_average (whose statistics are constants). On small inputs the pure-PyTorch path
spends most of its time dispatching a dozen tiny per-channel ops; this is what brings those
layers to the speed of the native kernel (``scripts/bench_norm.py`` shows both paths side by
side).

The extension is built on first use by torch's C++ extension loader (a C++ compiler and ninja,
about half a minute once; cached under ``TORCH_EXTENSIONS_DIR``, by default
``~/.cache/torch_extensions``). Where it cannot be built the layers keep their pure-PyTorch path,
after one warning. A layer's ``compiled_step`` attribute chooses per layer; ``NORMLAB_KERNELS=off``
sets its default to the pure-PyTorch path. Both paths are tested against the same references.
"""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor, nn

SOURCE = Path(__file__).parent / "csrc" / "fused_norm.cpp"
DTYPES = (torch.float32, torch.float64)
ENABLED = os.environ.get("NORMLAB_KERNELS", "on").lower() not in ("off", "0", "false")


def build() -> ModuleType:
    """Compile (or load the cached build of) the extension; raises if that fails."""
    from torch.utils.cpp_extension import load

    _put_ninja_on_path()
    suffix, flags = _vector_flags()
    return load(
        name=f"normlab_fused_norm{suffix}",
        sources=[str(SOURCE)],
        extra_cflags=["-O3", *flags],
        verbose=False,
    )


def _vector_flags() -> tuple[str, list[str]]:
    """AVX2/FMA code where this CPU has it (as ATen's own kernels use). The name carries the
    choice, so a build cache shared by machines of several kinds (a cluster's home directory)
    never hands one a binary its CPU cannot run."""
    if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        return "_avx2", ["-mavx2", "-mfma"]
    return "", []


def _put_ninja_on_path() -> None:
    """torch's loader runs ``ninja`` from PATH; the pip-installed one lives in the venv, which
    need not be activated."""
    try:
        import ninja
    except ImportError:
        return
    path = os.environ.get("PATH", "")
    if ninja.BIN_DIR not in path.split(os.pathsep):
        os.environ["PATH"] = os.pathsep.join(filter(None, (ninja.BIN_DIR, path)))


@functools.cache
def extension() -> ModuleType | None:
    """The built extension, or None (with one warning) where it cannot be built."""
    try:
        return build()
    except Exception as error:  # any build failure falls back to the pure-PyTorch layers
        warnings.warn(
            f"normlab: compiled norm kernels unavailable, using the pure-PyTorch path "
            f"({type(error).__name__}: {(str(error).strip().splitlines() or [''])[-1]})",
            RuntimeWarning,
            stacklevel=2,
        )
        return None


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
        and extension() is not None
    )


def moving_average_step(layer: nn.Module, x: Tensor) -> Tensor:
    """One training step of a ``MovingAverageNorm`` with ``grad_through_batch=False``."""
    return extension().moving_average_step(
        *_step_state(layer, x, "running_var"), layer.update == "before", layer.diagnostics_slot()
    )


def renorm_step(layer: nn.Module, x: Tensor) -> Tensor:
    """One training step of a ``BatchRenorm``."""
    return extension().renorm_step(
        *_step_state(layer, x, "running_std"), layer.rmax, layer.dmax, layer.diagnostics_slot()
    )


def _step_state(layer: nn.Module, x: Tensor, spread: str) -> tuple:
    """The arguments both steps open with: input, affine, running buffers, momentum, eps. Read
    from the parameter and buffer dicts: nn.Module.__getattr__ costs about half a microsecond
    per name, several percent of a whole step at batch size 1."""
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
