"""MNIST, MNIST-5k and Fashion-MNIST: 28x28 grey images in 10 classes, read from their IDX
files (gzipped or not) in ``root``, ``root/NAME``, ``root/NAME/raw`` or torchvision's
``root/<Class>/raw``, and fetched from the mirror, checksummed, with ``download``.
Standardized as bytes/255, then minus the mean and divided by the (population) std of all train
pixels. Validation data are each set's official test split."""

from __future__ import annotations

import gzip
import math
import zlib
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from normlab.data.dataset import Arrays, DataError, Dataset, from_arrays
from normlab.data.files import check_labels, fetch, locate, missing_file, standardize
from normlab.data.registry import DataSet, register

NUM_CLASSES = 10
_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension


@dataclass(frozen=True)
class IdxSource:
    folder: str  # torchvision's class name: it keeps the files in root/<folder>/raw
    url: str | None  # None: no public mirror to download from
    md5: dict[str, str]


SOURCES: dict[str, IdxSource] = {}


def _load(name: str, root: Path, cache_dir: Path, download: bool) -> Dataset:
    return from_arrays(name, _arrays(name, root, download), NUM_CLASSES)


def _register(name: str, source: IdxSource) -> None:
    SOURCES[name] = source
    register(DataSet(name, (1, 28, 28), NUM_CLASSES, partial(_load, name)))


_register(
    "mnist",
    IdxSource(
        folder="MNIST",
        url="https://ossci-datasets.s3.amazonaws.com/mnist/",
        md5={
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    ),
)
# 5,000 real MNIST images, 400 / 100 per class for train / test, as the project keeps them in
# shared/data/mnist_5k (its README gives the provenance): a study on it says "MNIST-5k"
_register(
    "mnist_5k",
    IdxSource(
        folder="mnist_5k",
        url=None,
        md5={
            "train-images-idx3-ubyte.gz": "c84306e9062c64d3f06d858a5362b394",
            "train-labels-idx1-ubyte.gz": "2047a902ff5030e031feca3dcbd3762e",
            "t10k-images-idx3-ubyte.gz": "4e631a0f1e52f70bcf068823e6742e1b",
            "t10k-labels-idx1-ubyte.gz": "6b74550299a461fcced86fb02cc51317",
        },
    ),
)
_register(
    "fashion_mnist",
    IdxSource(
        folder="FashionMNIST",
        url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        md5={
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
    ),
)


def _arrays(name: str, root: Path, download: bool) -> Arrays:
    splits = []
    for prefix in ("train", "t10k"):
        images_path = _idx_file(name, f"{prefix}-images-idx3-ubyte", root, download)
        labels_path = _idx_file(name, f"{prefix}-labels-idx1-ubyte", root, download)
        images = _parse_idx(images_path, _IMAGES_MAGIC)
        labels = _parse_idx(labels_path, _LABELS_MAGIC)
        _check_idx_pair(images, images_path, labels, labels_path)
        splits.append((images[:, None], labels.astype(np.int64)))
    (train_images, y_train), (val_images, y_val) = splits
    x_train, x_val = standardize(train_images, val_images, root)
    return x_train, y_train, x_val, y_val


def _idx_dirs(name: str, root: Path) -> list[Path]:
    folder = SOURCES[name].folder
    return [root, root / name, root / name / "raw", root / folder / "raw"]


def _idx_file(name: str, stem: str, root: Path, download: bool) -> Path:
    dirs = _idx_dirs(name, root)
    found = locate((f"{stem}.gz", stem), dirs)
    if found is not None:
        return found
    source = SOURCES[name]
    if not download or source.url is None:
        hint = "" if source.url else f" ({name} has no download mirror: point data.root at it.)"
        raise missing_file((f"{stem}.gz", stem), dirs, hint)
    target = root / f"{stem}.gz"
    fetch(source.url + target.name, target, source.md5[target.name])
    return target


def _read_maybe_gzip(path: Path) -> bytes:
    if path.suffix != ".gz":
        return path.read_bytes()
    try:
        return gzip.decompress(path.read_bytes())
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        raise DataError(
            f"{path}: expected a valid gzip stream, found a corrupt one ({error})"
        ) from error


def _parse_idx(path: Path, magic: int) -> np.ndarray:
    """An IDX array of unsigned bytes: a big-endian int32 magic number 0x000008NN (NN = number
    of dimensions), NN big-endian int32 sizes, then the row-major payload."""
    raw = _read_maybe_gzip(path)
    ndim = magic & 0xFF
    header_bytes = 4 * (1 + ndim)
    if len(raw) < header_bytes:
        raise DataError(f"{path}: expected an IDX header of {header_bytes} bytes, found {len(raw)}")
    found_magic = int.from_bytes(raw[:4], "big")
    if found_magic != magic:
        raise DataError(f"{path}: expected IDX magic 0x{magic:08x}, found 0x{found_magic:08x}")
    shape = tuple(int(size) for size in np.frombuffer(raw, ">i4", count=ndim, offset=4))
    expected = math.prod(shape) if min(shape) >= 0 else -1
    found = len(raw) - header_bytes
    if found != expected:
        raise DataError(
            f"{path}: expected {expected} payload bytes for shape {shape}, "
            f"found {found} (truncated or corrupt file)"
        )
    return np.frombuffer(raw, np.uint8, offset=header_bytes).reshape(shape)


def _check_idx_pair(
    images: np.ndarray, images_path: Path, labels: np.ndarray, labels_path: Path
) -> None:
    if images.shape[1:] != (28, 28):
        raise DataError(f"{images_path}: expected 28×28 images, found {images.shape[1:]}")
    if len(images) == 0:
        raise DataError(f"{images_path}: expected at least one image, found 0")
    if len(labels) != len(images):
        raise DataError(
            f"{labels_path}: expected {len(images)} labels, one per image in {images_path.name}, "
            f"found {len(labels)}"
        )
    check_labels(labels, labels_path, NUM_CLASSES)
