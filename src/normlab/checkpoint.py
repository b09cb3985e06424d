"""Checkpoints: everything a run needs to continue exactly where it stopped.

Saved atomically (write, fsync, rename) and loaded with ``torch.load(weights_only=True)``, so a
checkpoint can never be half-written and never executes code when read.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from normlab.files import atomic_write


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda handle: torch.save(state, handle))


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    return torch.load(path, map_location=device, weights_only=True)


def rng_state() -> dict[str, Any]:
    """Every random generator a run may draw from, as plain tensors and lists."""
    state = {
        "torch": torch.get_rng_state(),
        "python": _python_state_to_list(random.getstate()),
        "numpy": _numpy_state_to_list(np.random.get_state()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    random.setstate(_python_state_from_list(state["python"]))
    np.random.set_state(_numpy_state_from_list(state["numpy"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _python_state_to_list(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _python_state_from_list(state: list) -> tuple:
    version, internal, gauss = state
    return version, tuple(internal), gauss


def _numpy_state_to_list(state: tuple) -> list:
    name, keys, pos, has_gauss, cached = state
    return [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]


def _numpy_state_from_list(state: list) -> tuple:
    name, keys, pos, has_gauss, cached = state
    return name, keys.cpu().numpy().astype(np.uint32), pos, has_gauss, cached
