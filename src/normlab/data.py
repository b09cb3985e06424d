"""Data sets held whole as device tensors, and samplers that cut them into index batches.

There is no DataLoader: a run loads its data set once with `load_dataset`, moves it to the
device, and a sampler from `make_sampler` yields int64 index tensors on that device, so a
training step is `x_train[indices]` (airbench style). Data flow one way, config → data →
trainer; this module imports neither the trainer nor Hydra.

File formats are parsed from bytes with numpy and never unpickled: MNIST and Fashion-MNIST
from their IDX files, CIFAR-10 from its binary version. MNIST-1D is generated procedurally by
the `mnist1d` package and cached as an `.npz`.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import math
import numbers
import os
import random
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import BinaryIO, Protocol

import numpy as np
import torch

DATASETS = ("mnist1d", "mnist", "mnist_5k", "fashion_mnist", "cifar10")
# one example's shape (no batch dim) and the classes, known before any file is read
INPUT_SHAPES = {
    "mnist1d": (1, 40),
    "mnist": (1, 28, 28),
    "mnist_5k": (1, 28, 28),
    "fashion_mnist": (1, 28, 28),
    "cifar10": (3, 32, 32),
}
NUM_CLASSES = dict.fromkeys(DATASETS, 10)
SAMPLERS = ("iid", "non_iid")

_Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]

_NUM_CLASSES = 10
_IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
_IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
_CIFAR10_RECORD_BYTES = 1 + 3 * 32 * 32
_CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
_CIFAR10_TEST_FILE = "test_batch.bin"
_CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
_CIFAR10_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
_DOWNLOAD_TIMEOUT_S = 60  # seconds without data before a stalled download fails
_DOWNLOAD_HINT = "Place the files there, or set download=true (data.download=true) to fetch them."


class DataError(ValueError):
    """A data file or data argument is not what it must be; the message names it, what was
    expected and what was found."""


@dataclass(frozen=True)
class _IdxSource:
    folder: str  # torchvision's class name: it keeps the files in root/<folder>/raw
    url: str | None  # None: no public mirror to download from
    md5: dict[str, str]


_IDX_SOURCES = {
    "mnist": _IdxSource(
        folder="MNIST",
        url="https://ossci-datasets.s3.amazonaws.com/mnist/",
        md5={
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    ),
    # 5,000 real MNIST images, 400 / 100 per class for train / test, as the project keeps them
    # in shared/data/mnist_5k (its README gives the provenance): a study on it says "MNIST-5k"
    "mnist_5k": _IdxSource(
        folder="mnist_5k",
        url=None,
        md5={
            "train-images-idx3-ubyte.gz": "c84306e9062c64d3f06d858a5362b394",
            "train-labels-idx1-ubyte.gz": "2047a902ff5030e031feca3dcbd3762e",
            "t10k-images-idx3-ubyte.gz": "4e631a0f1e52f70bcf068823e6742e1b",
            "t10k-labels-idx1-ubyte.gz": "6b74550299a461fcced86fb02cc51317",
        },
    ),
    "fashion_mnist": _IdxSource(
        folder="FashionMNIST",
        url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        md5={
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
    ),
}


@dataclass
class Dataset:
    """A classification data set held whole as tensors.

    `x_*` are float32 of shape (N, C, *spatial) and standardized (see `load_dataset`);
    `y_*` are int64 class indices of shape (N,) in [0, num_classes).
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one example, without the batch dimension, e.g. (1, 40)."""
        return tuple(self.x_train.shape[1:])

    def to(self, device: str | torch.device) -> Dataset:
        """A copy with every tensor on `device`."""
        return replace(
            self,
            x_train=self.x_train.to(device),
            y_train=self.y_train.to(device),
            x_val=self.x_val.to(device),
            y_val=self.y_val.to(device),
        )


def load_dataset(
    name: str,
    root: str | Path | None = None,
    cache_dir: str | Path = ".cache/normlab",
    download: bool = False,
    device: str | torch.device = "cpu",
    train_size: int | None = None,
    val_size: int | None = None,
) -> Dataset:
    """Load data set `name` (one of DATASETS) onto `device`.

    Files are looked for under `root` (default: `cache_dir/<name>`); with `download=True` the
    missing ones are fetched from the canonical mirror and checked against known MD5 sums.
    `mnist1d` is generated (no files, no network) and cached in `cache_dir`; it ignores `root`
    and `download`. Validation data are each data set's official test split.

    Standardization:
      - mnist1d: as the generator leaves it (zero mean, unit std over its 5000 train+test
        examples together).
      - mnist, fashion_mnist: bytes/255, then minus the mean and divided by the (population)
        std of all train pixels, one channel.
      - cifar10: bytes/255, then per channel minus the train mean and divided by the train std.
    Statistics come from the full train split before truncation, so `train_size=k` gives
    exactly the first k examples of the full load.

    `train_size`/`val_size`, when given, keep the first k examples of the split; they must be
    in [1, available].
    """
    if name not in DATASETS:
        raise DataError(f"data.name: expected one of {DATASETS}, found {name!r}")
    data_root = Path(cache_dir) / name if root is None else Path(root)
    if name == "mnist1d":
        x_train, y_train, x_val, y_val = _load_mnist1d(Path(cache_dir))
    elif name == "cifar10":
        x_train, y_train, x_val, y_val = _load_cifar10(data_root, download)
    else:
        x_train, y_train, x_val, y_val = _load_idx_dataset(name, data_root, download)
    train_count = _checked_size("train_size", train_size, len(y_train), "train")
    val_count = _checked_size("val_size", val_size, len(y_val), "validation")
    return Dataset(
        name=name,
        x_train=torch.from_numpy(x_train[:train_count]).to(device),
        y_train=torch.from_numpy(y_train[:train_count]).to(device),
        x_val=torch.from_numpy(x_val[:val_count]).to(device),
        y_val=torch.from_numpy(y_val[:val_count]).to(device),
        num_classes=_NUM_CLASSES,
    )


def hold_out_validation(data: Dataset, fraction: float, seed: int = 0) -> Dataset:
    """``data`` with a fixed ``fraction`` of its training examples moved out to become the
    evaluated set (``x_val``/``y_val``) and the rest left to train on: hyperparameters chosen
    on it never see the test split. The split depends on ``seed`` only, not on the run's seed,
    so every run of a study holds out the same examples."""
    count = len(data.y_train)
    held = min(count - 1, max(1, round(fraction * count)))
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).to(
        data.x_train.device
    )
    train, validation = order[held:], order[:held]
    return replace(
        data,
        x_train=data.x_train[train],
        y_train=data.y_train[train],
        x_val=data.x_train[validation],
        y_val=data.y_train[validation],
    )


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


def _checked_int(argument: str, value: object, low: int, high: int, high_means: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise DataError(f"{argument}: expected an integer, found {value!r}")
    if not low <= value <= high:
        raise DataError(
            f"{argument}: expected an integer in [{low}, {high}] ({high_means}), found {value}"
        )
    return int(value)


def _checked_size(argument: str, size: int | None, available: int, split: str) -> int:
    if size is None:
        return available
    return _checked_int(argument, size, 1, available, f"the number of {split} examples")


# ---------------------------------------------------------------------------- files


@contextlib.contextmanager
def _atomic_file(path: Path) -> Iterator[BinaryIO]:
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


def _download(url: str, path: Path, expected_md5: str) -> None:
    """Fetch `url` to `path`; the file appears only once its MD5 matches."""
    digest = hashlib.md5()
    with _atomic_file(path) as file:
        try:
            with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    digest.update(chunk)
                    file.write(chunk)
        except (urllib.error.URLError, OSError) as error:
            raise DataError(f"{url}: expected to download it to {path}, failed: {error}") from error
        _check_md5(url, expected_md5, digest.hexdigest())


def _locate(filenames: Sequence[str], dirs: Sequence[Path]) -> Path | None:
    for directory in dirs:
        for filename in filenames:
            if (directory / filename).is_file():
                return directory / filename
    return None


def _missing_file(filenames: Sequence[str], dirs: Sequence[Path], hint: str = "") -> DataError:
    tried = ", ".join(str(directory / filename) for directory in dirs for filename in filenames)
    return DataError(f"expected {filenames[0]}, found none of: {tried}. {_DOWNLOAD_HINT}{hint}")


def _check_labels(labels: np.ndarray, path: Path) -> None:
    if labels.size and labels.max() >= _NUM_CLASSES:
        index = int(labels.argmax())
        raise DataError(
            f"{path}: expected labels in [0, {_NUM_CLASSES - 1}], "
            f"found {labels[index]} at example {index}"
        )


def _standardize(train: np.ndarray, val: np.ndarray, source: Path) -> tuple[np.ndarray, ...]:
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


# ---------------------------------------------------------------------------- MNIST-1D


def _load_mnist1d(cache_dir: Path) -> _Arrays:
    import mnist1d.data  # deferred: it imports matplotlib and requests

    args = mnist1d.data.get_dataset_args()
    path = _mnist1d_cache_path(cache_dir, vars(args))
    if path.exists():
        return _read_mnist1d_cache(path)
    arrays = _generate_mnist1d(args)
    with _atomic_file(path) as file:
        np.savez(file, **dict(zip(_MNIST1D_KEYS, arrays, strict=True)))
    return arrays


_MNIST1D_KEYS = ("x_train", "y_train", "x_val", "y_val")


def _mnist1d_cache_path(cache_dir: Path, args: dict) -> Path:
    """The cache file for the generator `args`: every argument but the download URL, and the
    generator's version, enter the name, so changing any of them never reuses a stale file."""
    key = {k: v for k, v in args.items() if k != "url"}
    key["mnist1d_version"] = metadata.version("mnist1d")
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    name = f"mnist1d_n{args['num_samples']}_seed{args['seed']}_len{args['final_seq_length']}"
    return cache_dir / f"{name}_{digest}.npz"


def _generate_mnist1d(args: object) -> _Arrays:
    import mnist1d.data

    # make_dataset reseeds the global RNGs; restore them so loading data never changes the
    # random stream of the run that loads it.
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        raw = mnist1d.data.make_dataset(args)
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
    return (
        np.asarray(raw["x"], dtype=np.float32)[:, None, :],
        np.asarray(raw["y"], dtype=np.int64),
        np.asarray(raw["x_test"], dtype=np.float32)[:, None, :],
        np.asarray(raw["y_test"], dtype=np.int64),
    )


def _read_mnist1d_cache(path: Path) -> _Arrays:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = tuple(archive[key] for key in _MNIST1D_KEYS)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        raise DataError(
            f"{path}: expected a MNIST-1D cache with arrays {_MNIST1D_KEYS}, found an unreadable "
            f"file ({error}); delete it to regenerate"
        ) from error
    return arrays


# ---------------------------------------------------------------------------- MNIST, Fashion-MNIST


def _load_idx_dataset(name: str, root: Path, download: bool) -> _Arrays:
    splits = []
    for prefix in ("train", "t10k"):
        images_path = _idx_file(name, f"{prefix}-images-idx3-ubyte", root, download)
        labels_path = _idx_file(name, f"{prefix}-labels-idx1-ubyte", root, download)
        images = _parse_idx(images_path, _IDX_IMAGES_MAGIC)
        labels = _parse_idx(labels_path, _IDX_LABELS_MAGIC)
        _check_idx_pair(images, images_path, labels, labels_path)
        splits.append((images[:, None], labels.astype(np.int64)))
    (train_images, y_train), (val_images, y_val) = splits
    x_train, x_val = _standardize(train_images, val_images, root)
    return x_train, y_train, x_val, y_val


def _idx_dirs(name: str, root: Path) -> list[Path]:
    folder = _IDX_SOURCES[name].folder
    return [root, root / name, root / name / "raw", root / folder / "raw"]


def _idx_file(name: str, stem: str, root: Path, download: bool) -> Path:
    dirs = _idx_dirs(name, root)
    found = _locate((f"{stem}.gz", stem), dirs)
    if found is not None:
        return found
    source = _IDX_SOURCES[name]
    if not download or source.url is None:
        hint = "" if source.url else f" ({name} has no download mirror: point data.root at it.)"
        raise _missing_file((f"{stem}.gz", stem), dirs, hint)
    target = root / f"{stem}.gz"
    _download(source.url + target.name, target, source.md5[target.name])
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
    _check_labels(labels, labels_path)


# ---------------------------------------------------------------------------- CIFAR-10


def _load_cifar10(root: Path, download: bool) -> _Arrays:
    directory = _cifar10_dir(root, download)
    batches = [_parse_cifar10_batch(directory / filename) for filename in _CIFAR10_TRAIN_FILES]
    train_images = np.concatenate([images for images, _ in batches])
    y_train = np.concatenate([labels for _, labels in batches])
    val_images, y_val = _parse_cifar10_batch(directory / _CIFAR10_TEST_FILE)
    x_train, x_val = _standardize(train_images, val_images, directory)
    return x_train, y_train, x_val, y_val


def _cifar10_dirs(root: Path) -> list[Path]:
    return [root, root / "cifar-10-batches-bin", root / "cifar10" / "cifar-10-batches-bin"]


def _cifar10_dir(root: Path, download: bool) -> Path:
    """The directory holding all six binary batch files, downloading them if allowed."""
    required = (*_CIFAR10_TRAIN_FILES, _CIFAR10_TEST_FILE)
    for directory in _cifar10_dirs(root):
        if all((directory / filename).is_file() for filename in required):
            return directory
    if not download:
        dirs = _cifar10_dirs(root)
        missing = [f for f in required if _locate((f,), dirs) is None]
        if not missing:
            raise DataError(
                f"expected all of {required} in one directory, found them split over {dirs}"
            )
        raise _missing_file(missing[:1], dirs, _cifar10_pickle_hint(root))
    archive = root / Path(_CIFAR10_URL).name
    if archive.is_file():
        verify_md5(archive, _CIFAR10_MD5)
    else:
        _download(_CIFAR10_URL, archive, _CIFAR10_MD5)
    _extract_tar(archive, root)
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
    if raw.size == 0 or raw.size % _CIFAR10_RECORD_BYTES:
        raise DataError(
            f"{path}: expected a positive multiple of {_CIFAR10_RECORD_BYTES}-byte records "
            f"(1 label byte + 3072 pixel bytes), found {raw.size} bytes"
        )
    records = raw.reshape(-1, _CIFAR10_RECORD_BYTES)
    labels = records[:, 0].astype(np.int64)
    _check_labels(labels, path)
    return records[:, 1:].reshape(-1, 3, 32, 32), labels


def _extract_tar(archive: Path, dest: Path) -> None:
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


# ---------------------------------------------------------------------------- samplers


class Sampler(Protocol):
    """An endless, reproducible stream of training batches as index tensors on the data's
    device."""

    epoch: int  # completed epochs

    @property
    def batches_per_epoch(self) -> int: ...

    def next_indices(self) -> torch.Tensor: ...

    def epoch_batches(self) -> list[torch.Tensor]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


def make_sampler(
    kind: str,
    labels: torch.Tensor,
    batch_size: int,
    seed: int,
    drop_last: bool = True,
    classes_per_batch: int = 2,
) -> Sampler:
    """A sampler of kind `kind` (one of SAMPLERS) over the examples whose labels are `labels`.

    `drop_last` applies to "iid" only and `classes_per_batch` to "non_iid" only; see
    IidSampler and NonIidSampler.
    """
    if kind == "iid":
        return IidSampler(labels, batch_size, seed, drop_last=drop_last)
    if kind == "non_iid":
        return NonIidSampler(labels, batch_size, seed, classes_per_batch=classes_per_batch)
    raise DataError(f"sampler: expected one of {SAMPLERS}, found {kind!r}")


class _EpochSampler:
    """Serves batches from one epoch's index order, made on the CPU from a generator seeded
    with `seed`, moved to the labels' device once per epoch, and sliced per batch."""

    kind = ""

    def __init__(self, labels: torch.Tensor, batch_size: int, seed: int) -> None:
        if labels.ndim != 1 or len(labels) == 0 or labels.is_floating_point():
            raise DataError(
                f"labels: expected a non-empty 1-D integer tensor, "
                f"found shape {tuple(labels.shape)} dtype {labels.dtype}"
            )
        self.labels = labels
        self.batch_size = _checked_int(
            "batch_size", batch_size, 1, len(labels), "the number of examples"
        )
        self.seed = seed
        self.device = labels.device
        self.epoch = 0
        self._position = 0
        self._generator = torch.Generator().manual_seed(seed)
        self._order = torch.empty(0, dtype=torch.int64)

    @property
    def batches_per_epoch(self) -> int:
        return len(self.labels) // self.batch_size

    def next_indices(self) -> torch.Tensor:
        """The next batch of the training stream: int64 indices on the labels' device."""
        start = self._position * self.batch_size
        batch = self._order[start : start + self.batch_size]
        self._position += 1
        if self._position == self.batches_per_epoch:
            self.epoch += 1
            self._position = 0
            self._begin_epoch()
        return batch

    def epoch_batches(self) -> list[torch.Tensor]:
        """One epoch of batches for evaluation: the batches a fresh sampler with this
        configuration and seed would serve in its first epoch. The same on every call, and
        the training stream is left untouched."""
        fresh = self._fresh()
        return list(fresh._order.split(self.batch_size)[: fresh.batches_per_epoch])

    def state_dict(self) -> dict:
        """Everything needed to continue the stream exactly; only tensors, ints, strings,
        lists and dicts, so it loads with `torch.load(weights_only=True)`."""
        return {
            "config": self._config(),
            "epoch": self.epoch,
            "position": self._position,
            "generator": self._generator.get_state(),
            "order": self._order.cpu().clone(),
            **self._extra_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue the stream saved by `state_dict` of a sampler configured like this one."""
        missing = sorted(set(self.state_dict()) - set(state))
        if missing:
            raise DataError(f"sampler state: expected keys {missing}, found only {sorted(state)}")
        config = self._config()
        if state["config"] != config:
            raise DataError(
                f"sampler state: expected one saved with config {config}, found {state['config']}"
            )
        self.epoch = int(state["epoch"])
        self._position = int(state["position"])
        self._generator.set_state(state["generator"])
        self._order = state["order"].clone().to(self.device)
        self._load_extra_state(state)

    def _begin_epoch(self) -> None:
        self._order = self._new_order().to(self.device)

    def _config(self) -> dict:
        return {"kind": self.kind, "num_examples": len(self.labels), "batch_size": self.batch_size}

    def _new_order(self) -> torch.Tensor:
        raise NotImplementedError

    def _fresh(self) -> _EpochSampler:
        raise NotImplementedError

    def _extra_state(self) -> dict:
        return {}

    def _load_extra_state(self, state: dict) -> None:
        pass


class IidSampler(_EpochSampler):
    """Shuffle every epoch and serve consecutive slices of the permutation.

    With `drop_last=True` the final partial batch of each epoch is dropped, so every step sees
    exactly `batch_size` examples: the batch size is the variable under study, and a smaller
    last batch would give noisier batch statistics. `epoch_batches` drops it too, since
    evaluation in train mode must use the run's batch size. With `drop_last=False` each epoch
    covers every example exactly once, ending with a smaller batch if `batch_size` does not
    divide the number of examples.
    """

    kind = "iid"

    def __init__(
        self, labels: torch.Tensor, batch_size: int, seed: int, drop_last: bool = True
    ) -> None:
        super().__init__(labels, batch_size, seed)
        self.drop_last = bool(drop_last)
        self._begin_epoch()

    @property
    def batches_per_epoch(self) -> int:
        if self.drop_last:
            return len(self.labels) // self.batch_size
        return math.ceil(len(self.labels) / self.batch_size)

    def _new_order(self) -> torch.Tensor:
        return torch.randperm(len(self.labels), generator=self._generator)

    def _fresh(self) -> IidSampler:
        return IidSampler(self.labels, self.batch_size, self.seed, self.drop_last)

    def _config(self) -> dict:
        return {**super()._config(), "drop_last": self.drop_last}


class NonIidSampler(_EpochSampler):
    """Each batch holds examples of only `classes_per_batch` = k classes, as in the
    Batch Renormalization paper's non-i.i.d. experiment (Ioffe 2017, arXiv:1702.03275, §4.3).

    Per batch, k distinct classes (of those present in `labels`) are drawn uniformly at random
    and the `batch_size` examples are spread over them as evenly as possible (sizes differ by at
    most one, the larger shares going to random classes of the k). Examples of each class come
    from a shuffled per-class queue that is reshuffled only when exhausted, so within a pass no
    example repeats unless its class is drawn more often than it has examples. Positions within
    a batch are shuffled, so any sub-batch mixes the k classes. An epoch is
    len(labels) // batch_size batches, all full; there is no partial batch to drop.
    """

    kind = "non_iid"

    def __init__(
        self, labels: torch.Tensor, batch_size: int, seed: int, classes_per_batch: int = 2
    ) -> None:
        super().__init__(labels, batch_size, seed)
        labels_cpu = labels.cpu()
        classes = torch.unique(labels_cpu)
        self.classes_per_batch = _checked_int(
            "classes_per_batch",
            classes_per_batch,
            1,
            min(len(classes), self.batch_size),
            f"at most the {len(classes)} classes present and batch_size {self.batch_size}",
        )
        self._members = [torch.nonzero(labels_cpu == c).flatten() for c in classes]
        self._queues = [self._shuffled(members) for members in self._members]
        self._queue_positions = [0] * len(classes)
        self._begin_epoch()

    def _new_order(self) -> torch.Tensor:
        num_batches, batch_size = self.batches_per_epoch, self.batch_size
        num_classes, k = len(self._members), self.classes_per_batch
        chosen = torch.rand(num_batches, num_classes, generator=self._generator).argsort(dim=1)
        shares = torch.full((k,), batch_size // k)
        shares[: batch_size % k] += 1
        class_at = chosen[:, :k].repeat_interleave(shares, dim=1)
        mix = torch.rand(num_batches, batch_size, generator=self._generator).argsort(dim=1)
        class_at = class_at.gather(1, mix).flatten()
        order = torch.empty(num_batches * batch_size, dtype=torch.int64)
        for slot in range(num_classes):
            where = class_at == slot
            order[where] = self._take(slot, int(where.sum()))
        return order

    def _take(self, slot: int, count: int) -> torch.Tensor:
        """The next `count` examples of class `slot` from its queue, reshuffling when empty."""
        parts = [torch.empty(0, dtype=torch.int64)]
        while count > 0:
            if self._queue_positions[slot] == len(self._queues[slot]):
                self._queues[slot] = self._shuffled(self._members[slot])
                self._queue_positions[slot] = 0
            start = self._queue_positions[slot]
            step = min(count, len(self._queues[slot]) - start)
            parts.append(self._queues[slot][start : start + step])
            self._queue_positions[slot] = start + step
            count -= step
        return torch.cat(parts)

    def _shuffled(self, members: torch.Tensor) -> torch.Tensor:
        return members[torch.randperm(len(members), generator=self._generator)]

    def _fresh(self) -> NonIidSampler:
        return NonIidSampler(self.labels, self.batch_size, self.seed, self.classes_per_batch)

    def _config(self) -> dict:
        return {
            **super()._config(),
            "classes_per_batch": self.classes_per_batch,
            "class_sizes": [len(members) for members in self._members],
        }

    def _extra_state(self) -> dict:
        return {
            "queues": [queue.clone() for queue in self._queues],
            "queue_positions": list(self._queue_positions),
        }

    def _load_extra_state(self, state: dict) -> None:
        self._queues = [queue.clone() for queue in state["queues"]]
        self._queue_positions = [int(position) for position in state["queue_positions"]]
