"""normlab's compiled CPU operators, one C++ extension built from ``csrc/*.cpp``.

Each file registers its operators with PyTorch's dispatcher (``torch.ops.normlab``, through
``TORCH_LIBRARY``): the norm layers' training steps (``fused_norm.cpp``,
:mod:`normlab.norms.kernels`) and a packed model's linear layer (``packed_linear.cpp``,
:mod:`normlab.packing`). The
extension's Python module holds their eager entry points (``module.cpp``): pybind11 converts the
arguments in a fraction of the time of a ``torch.ops`` call.

The extension is built on first use by torch's C++ extension loader (a C++ compiler and ninja,
about a minute once; cached under ``TORCH_EXTENSIONS_DIR``, by default
``~/.cache/torch_extensions``). Where it cannot be built every user keeps its pure-PyTorch path,
after one warning; ``NORMLAB_KERNELS=off`` makes that path the default.
"""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path
from types import ModuleType

import torch

SOURCES = sorted((Path(__file__).parent / "csrc").glob("*.cpp"))
ENABLED = os.environ.get("NORMLAB_KERNELS", "on").lower() not in ("off", "0", "false")


def build() -> ModuleType:
    """Compile (or load the cached build of) the extension, which registers its operators as
    ``torch.ops.normlab``, and return its Python module (the eager entry points); raises if
    that fails."""
    from torch.utils.cpp_extension import load

    _put_ninja_on_path()
    suffix, flags = _vector_flags()
    return load(
        name=f"normlab_ops{suffix}",
        sources=[str(source) for source in SOURCES],
        # no errno from sqrt: the per-channel loops vectorize
        extra_cflags=["-O3", "-fno-math-errno", *flags],
        is_python_module=True,
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
def entries() -> ModuleType | None:
    """The extension's Python module, or None (with one warning) where it cannot be built."""
    try:
        return build()
    except Exception as error:  # any build failure falls back to the pure-PyTorch paths
        warnings.warn(
            f"normlab: compiled CPU kernels unavailable, using the pure-PyTorch paths "
            f"({type(error).__name__}: {(str(error).strip().splitlines() or [''])[-1]})",
            RuntimeWarning,
            stacklevel=2,
        )
        return None


def serves(tensor: torch.Tensor) -> bool:
    """Whether a compiled CPU operator serves ``tensor`` by default: ``NORMLAB_KERNELS`` on, a
    CPU tensor, and the extension built."""
    return ENABLED and tensor.is_cpu and entries() is not None
