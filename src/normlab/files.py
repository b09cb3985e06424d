"""Crash-safe file writes: a reader never sees a half-written summary or checkpoint."""

from __future__ import annotations

import os
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Write through ``write(file)`` to a temporary sibling, fsync it, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp's 0600 would hide results from group members
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda handle: handle.write(text.encode()))


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class RunLock:
    """An exclusive claim on a run directory, so two jobs of a sweep never write the same run.

    The lock file names its holder (host, pid, SLURM job id). A claim is stale, and taken over,
    when its process is gone from this host, when it belongs to this same SLURM job (a requeued
    job resuming itself), or when nothing in the directory has changed for ``stale_after_s``.
    """

    NAME = ".lock"

    def __init__(self, run_dir: Path, stale_after_s: float = 3600.0) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / self.NAME
        self.stale_after_s = stale_after_s
        self.held = False

    @staticmethod
    def _me() -> str:
        return f"{socket.gethostname()} {os.getpid()} {os.environ.get('SLURM_JOB_ID', '-')}"

    def acquire(self) -> bool:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self.is_stale():
                    return False
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as handle:
                handle.write(self._me())
            self.held = True
            return True
        return False

    def holder(self) -> str:
        try:
            return self.path.read_text().strip()
        except OSError:
            return "?"

    def is_stale(self) -> bool:
        host, pid, job = ([*self.holder().split(), "?", "?", "?"])[:3]
        if job != "-" and job == os.environ.get("SLURM_JOB_ID"):
            return True
        if host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
            return True
        newest = max((p.stat().st_mtime for p in self.run_dir.iterdir()), default=0.0)
        return time.time() - newest > self.stale_after_s

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
