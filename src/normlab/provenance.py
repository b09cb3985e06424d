"""Where a run came from: the project's commit and whether its code differed from it, the
versions of the packages that shape its numbers, and the machine it ran on.

Every run's ``summary.json`` holds :func:`provenance` (and its wandb run the same), so a record
says how to make it again and the reproduction report can show both sides' origins. Reads
package metadata, not the packages: it imports neither torch nor Hydra.
"""

from __future__ import annotations

import functools
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

# the packages whose versions a record keeps: the numerics, the configs and the records
PACKAGES = (
    "torch",
    "numpy",
    "hydra-core",
    "omegaconf",
    "hydra-joblib-launcher",
    "hydra-submitit-launcher",
    "pandas",
    "scipy",
    "wandb",
)
# what decides a run's numbers: a change here makes the tree dirty; records and figures do not
CODE_PATHS = ("src", "conf", "pyproject.toml", "constraints.txt")
PROJECT = Path(__file__).resolve().parents[2]


@functools.cache
def provenance() -> dict[str, Any]:
    """``commit``, ``dirty``, ``versions`` (package -> version, None where not installed) and
    ``cpu``; the commit and the flag are None outside a git checkout."""
    commit, dirty = _git_state(PROJECT)
    return {"commit": commit, "dirty": dirty, "versions": versions(), "cpu": cpu_model()}


def versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in packages:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_state(root: Path) -> tuple[str | None, bool | None]:
    commit = _git(root, "rev-parse", "HEAD")
    if commit is None:
        return None, None
    changes = _git(root, "status", "--porcelain", "--", *CODE_PATHS)
    return commit, None if changes is None else bool(changes)


def _git(root: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None
