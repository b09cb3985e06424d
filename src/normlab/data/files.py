"""Data files on disk: found, fetched from a mirror and checked against an MD5 sum, written and
unpacked atomically (parallel jobs racing on one path see no file or a whole one), and images
of bytes standardized. Shared by the built-in data sets; nothing here is unpickled."""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np

from normlab.data.dataset import DataError

_DOWNLOAD_TIMEOUT_S = 60  # seconds without data before a stalled download fails
_DOWNLOAD_HINT = "Place the files there, or set download=true (data.download=true) to fetch them."


def verify_md5(path: str | Path, expected_md5: str) -> None:
    """Raise DataError unless the MD5 digest of the file at `path` is `expected_md5`."""
    digest = hashlib.md5()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    _check_md5(str(path), expected_md5, digest.hexdigest())


def _check_md5(source: str, expected: str, found: str) -> None:
    if found != expected.lower():
        raise DataError(f"{source}: expected md5 {expected}, found {found}")


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """Yield a temporary file beside `path` that replaces `path` only when the block succeeds,
    so parallel jobs racing on the same path see either no file or a complete one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp_name, path)
    finally:
        if os.path.exists(temp_name):
            os.unlink(temp_name)


def fetch(url: str, path: Path, expected_md5: str) -> None:
    """Fetch `url` to `path`; the file appears only once its MD5 matches."""
    digest = hashlib.md5()
    with atomic_file(path) as file:
        try:
            with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    digest.update(chunk)
                    file.write(chunk)
        except (urllib.error.URLError, OSError) as error:
            raise DataError(f"{url}: expected to download it to {path}, failed: {error}") from error
        _check_md5(url, expected_md5, digest.hexdigest())


def locate(filenames: Sequence[str], dirs: Sequence[Path]) -> Path | None:
    for directory in dirs:
        for filename in filenames:
            if (directory / filename).is_file():
                return directory / filename
    return None


def missing_file(filenames: Sequence[str], dirs: Sequence[Path], hint: str = "") -> DataError:
    tried = ", ".join(str(directory / filename) for directory in dirs for filename in filenames)
    return DataError(f"expected {filenames[0]}, found none of: {tried}. {_DOWNLOAD_HINT}{hint}")


def check_labels(labels: np.ndarray, path: Path, num_classes: int) -> None:
    if labels.size and labels.max() >= num_classes:
        index = int(labels.argmax())
        raise DataError(
            f"{path}: expected labels in [0, {num_classes - 1}], "
            f"found {labels[index]} at example {index}"
        )


def standardize(train: np.ndarray, val: np.ndarray, source: Path) -> tuple[np.ndarray, ...]:
    """Map uint8 images (N, C, ...) to float32 with zero mean and unit std per channel over
    `train`; `val` gets the same map."""
    tables = [_standardizing_table(train[:, c], source) for c in range(train.shape[1])]
    return tuple(_apply_tables(images, tables) for images in (train, val))


def _standardizing_table(pixels: np.ndarray, source: Path) -> np.ndarray:
    """The float32 value of each byte 0..255 after scaling to [0, 1] and standardizing by the
    mean and population std of `pixels`, computed exactly from the byte histogram."""
    counts = np.bincount(pixels.ravel(), minlength=256).astype(np.float64)
    values = np.arange(256) / 255.0
    total = counts.sum()
    mean = counts @ values / max(total, 1)
    std = math.sqrt(counts @ (values - mean) ** 2 / max(total, 1))
    if std == 0:
        raise DataError(
            f"{source}: expected train pixels with non-zero variance, "
            f"found {int(total)} pixels with std 0"
        )
    return ((values - mean) / std).astype(np.float32)


def _apply_tables(images: np.ndarray, tables: Sequence[np.ndarray]) -> np.ndarray:
    standardized = np.empty(images.shape, dtype=np.float32)
    for channel, table in enumerate(tables):
        standardized[:, channel] = table[images[:, channel]]
    return standardized


def extract_tar(archive: Path, dest: Path) -> None:
    """Extract into a private directory under `dest`, then move each file into place
    atomically, so a job racing with us never reads a half-written batch file."""
    staging = Path(tempfile.mkdtemp(dir=dest, prefix=".extract-"))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(staging, filter="data")
            else:
                tar.extractall(staging, members=_safe_members(tar, staging))
        for file in sorted(p for p in staging.rglob("*") if p.is_file()):
            target = dest / file.relative_to(staging)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(file, target)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
        raise DataError(f"{archive}: expected a safe, readable tar.gz, found: {error}") from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _safe_members(tar: tarfile.TarFile, dest: Path) -> list[tarfile.TarInfo]:
    """All members, after checking each is a plain file or directory that stays inside `dest`
    (for Pythons without tarfile's 'data' filter)."""
    members = tar.getmembers()
    base = dest.resolve()
    for member in members:
        inside = (
            base == (base / member.name).resolve() or base in (base / member.name).resolve().parents
        )
        if not (member.isfile() or member.isdir()) or not inside:
            raise DataError(
                f"{tar.name}: expected plain files inside the archive, found member {member.name!r}"
            )
    return members
