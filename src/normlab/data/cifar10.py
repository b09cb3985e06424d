"""CIFAR-10 (Krizhevsky 2009): 50000 train / 10000 test 32x32 colour images in 10 classes,
read from its binary version (``cifar-10-batches-bin``; the python version is pickles and never
loaded) in ``root``, and fetched from the mirror, checksummed, with ``download``. Standardized
as bytes/255, then per channel minus the train mean and divided by the train std."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from normlab.data.dataset import Arrays, DataError, Dataset, from_arrays
from normlab.data.files import (
    check_labels,
    extract_tar,
    fetch,
    locate,
    missing_file,
    standardize,
    verify_md5,
)
from normlab.data.registry import DataSet, register

NUM_CLASSES = 10
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
_RECORD_BYTES = 1 + 3 * 32 * 32
_TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
_TEST_FILE = "test_batch.bin"


def load(root: Path, cache_dir: Path, download: bool) -> Dataset:
    return from_arrays("cifar10", _arrays(root, download), NUM_CLASSES)


register(DataSet("cifar10", (3, 32, 32), NUM_CLASSES, load))


def _arrays(root: Path, download: bool) -> Arrays:
    directory = _cifar10_dir(root, download)
    batches = [_parse_cifar10_batch(directory / filename) for filename in _TRAIN_FILES]
    train_images = np.concatenate([images for images, _ in batches])
    y_train = np.concatenate([labels for _, labels in batches])
    val_images, y_val = _parse_cifar10_batch(directory / _TEST_FILE)
    x_train, x_val = standardize(train_images, val_images, directory)
    return x_train, y_train, x_val, y_val


def _cifar10_dirs(root: Path) -> list[Path]:
    return [root, root / "cifar-10-batches-bin", root / "cifar10" / "cifar-10-batches-bin"]


def _cifar10_dir(root: Path, download: bool) -> Path:
    """The directory holding all six binary batch files, downloading them if allowed."""
    required = (*_TRAIN_FILES, _TEST_FILE)
    for directory in _cifar10_dirs(root):
        if all((directory / filename).is_file() for filename in required):
            return directory
    if not download:
        dirs = _cifar10_dirs(root)
        missing = [f for f in required if locate((f,), dirs) is None]
        if not missing:
            raise DataError(
                f"expected all of {required} in one directory, found them split over {dirs}"
            )
        raise missing_file(missing[:1], dirs, _cifar10_pickle_hint(root))
    archive = root / Path(URL).name
    if archive.is_file():
        verify_md5(archive, _MD5)
    else:
        fetch(URL, archive, _MD5)
    extract_tar(archive, root)
    return root / "cifar-10-batches-bin"


def _cifar10_pickle_hint(root: Path) -> str:
    for directory in (root / "cifar-10-batches-py", root / "cifar10" / "cifar-10-batches-py"):
        if directory.is_dir():
            return (
                f" Found {directory}, the python version, which is pickles and never loaded "
                "(unpickling can run code): use the binary version (cifar-10-binary.tar.gz)."
            )
    return ""


def _parse_cifar10_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Records of 1 label byte then 3072 pixel bytes, channel-major (3, 32, 32)."""
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % _RECORD_BYTES:
        raise DataError(
            f"{path}: expected a positive multiple of {_RECORD_BYTES}-byte records "
            f"(1 label byte + 3072 pixel bytes), found {raw.size} bytes"
        )
    records = raw.reshape(-1, _RECORD_BYTES)
    labels = records[:, 0].astype(np.int64)
    check_labels(labels, path, NUM_CLASSES)
    return records[:, 1:].reshape(-1, 3, 32, 32), labels
