"""Tests for normlab.data: files are written here byte by byte and expected values are computed
independently with numpy, never with the module's own helpers."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import re
import struct
import tarfile
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from normlab import data
from normlab.data import (
    SAMPLERS,
    DataError,
    Dataset,
    SamplerStack,
    load_dataset,
    make_sampler,
    verify_md5,
)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
IDX_STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
CIFAR_FILES = (*(f"data_batch_{i}.bin" for i in range(1, 6)), "test_batch.bin")


# ---------------------------------------------------------------------------- helpers


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}i", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def make_idx_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "train-images-idx3-ubyte": rng.integers(0, 256, (3, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.array([3, 1, 9], dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (2, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.array([0, 7], dtype=np.uint8),
    }


def write_idx_files(directory: Path, arrays: dict[str, np.ndarray], compress: bool = True) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for stem, array in arrays.items():
        payload = idx_bytes(array, 0x803 if array.ndim == 3 else 0x801)
        if compress:
            (directory / f"{stem}.gz").write_bytes(gzip.compress(payload))
        else:
            (directory / stem).write_bytes(payload)


def standardized(train: np.ndarray, other: np.ndarray, axis: tuple[int, ...]) -> np.ndarray:
    scaled = train.astype(np.float64) / 255
    mean, std = scaled.mean(axis=axis, keepdims=True), scaled.std(axis=axis, keepdims=True)
    return (other.astype(np.float64) / 255 - mean) / std


def cifar_records(rng: np.random.Generator, labels: list[int]) -> tuple[bytes, np.ndarray]:
    pixels = rng.integers(0, 256, (len(labels), 3, 32, 32), dtype=np.uint8)
    records = b"".join(
        bytes([label]) + image.tobytes() for label, image in zip(labels, pixels, strict=True)
    )
    return records, pixels


def write_cifar(directory: Path, seed: int = 0) -> tuple[np.ndarray, ...]:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    train_labels, train_pixels = [], []
    for i, filename in enumerate(CIFAR_FILES[:5]):
        labels = [(2 * i) % 10, (2 * i + 1) % 10]
        records, pixels = cifar_records(rng, labels)
        (directory / filename).write_bytes(records)
        train_labels += labels
        train_pixels.append(pixels)
    test_labels = [9, 0, 4]
    records, test_pixels = cifar_records(rng, test_labels)
    (directory / "test_batch.bin").write_bytes(records)
    return (
        np.concatenate(train_pixels),
        np.array(train_labels),
        test_pixels,
        np.array(test_labels),
    )


def draw(sampler, count: int) -> list[torch.Tensor]:
    return [sampler.next_indices().clone() for _ in range(count)]


def assert_same_batches(first: list[torch.Tensor], second: list[torch.Tensor]) -> None:
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


def roundtrip(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


# ---------------------------------------------------------------------------- API surface


def test_unknown_dataset_names_argument_and_choices():
    with pytest.raises(DataError, match=re.escape("data.name")) as error:
        load_dataset("imagenet")
    assert all(name in str(error.value) for name in data.names())


def test_dataset_to_and_input_shape():
    dataset = Dataset(
        name="toy",
        x_train=torch.zeros(4, 3, 8, 8),
        y_train=torch.zeros(4, dtype=torch.int64),
        x_val=torch.zeros(2, 3, 8, 8),
        y_val=torch.zeros(2, dtype=torch.int64),
        num_classes=10,
    )
    moved = dataset.to("cpu")
    assert moved.input_shape == (3, 8, 8)
    assert moved.name == "toy" and moved.num_classes == 10


# ---------------------------------------------------------------------------- MNIST-1D


@pytest.fixture(scope="module")
def mnist1d_loaded(tmp_path_factory) -> tuple[Dataset, Path]:
    cache_dir = tmp_path_factory.mktemp("cache")
    return load_dataset("mnist1d", cache_dir=cache_dir), cache_dir


def test_mnist1d_shapes_and_labels(mnist1d_loaded):
    dataset, _ = mnist1d_loaded
    assert dataset.x_train.shape == (4000, 1, 40) and dataset.x_val.shape == (1000, 1, 40)
    assert dataset.x_train.dtype == torch.float32 and dataset.y_train.dtype == torch.int64
    assert dataset.input_shape == (1, 40) and dataset.num_classes == 10
    counts = torch.bincount(dataset.y_train, minlength=10)
    assert len(counts) == 10 and counts.min() >= 300 and counts.max() <= 500
    assert set(dataset.y_val.tolist()) == set(range(10))
    # the generator standardizes train and test together, so train alone is only close
    assert abs(dataset.x_train.mean().item()) < 0.1
    assert abs(dataset.x_train.std().item() - 1) < 0.1


def test_mnist1d_cache_is_written_once_and_reused(mnist1d_loaded, monkeypatch):
    import mnist1d.data

    dataset, cache_dir = mnist1d_loaded
    cached = sorted(cache_dir.iterdir())
    (data,) = [path for path in cached if path.suffix == ".npz"]
    assert "seed42" in data.name and "n5000" in data.name
    with np.load(data, allow_pickle=False) as archive:
        assert archive["x_train"].shape == (4000, 1, 40)
    (args,) = [path for path in cached if path.suffix == ".json"]
    assert json.loads(args.read_text()) == vars(mnist1d.data.get_dataset_args())

    def fail(*args, **kwargs):
        raise AssertionError("the generator asked again despite a cache")

    # neither the data nor the generator's arguments are asked of the package again
    monkeypatch.setattr(mnist1d.data, "make_dataset", fail)
    monkeypatch.setattr(mnist1d.data, "get_dataset_args", fail)
    again = load_dataset("mnist1d", cache_dir=cache_dir)
    assert torch.equal(again.x_train, dataset.x_train)
    assert torch.equal(again.y_val, dataset.y_val)
    assert sorted(cache_dir.iterdir()) == cached


def test_mnist1d_truncation_keeps_first_examples(mnist1d_loaded):
    dataset, cache_dir = mnist1d_loaded
    small = load_dataset("mnist1d", cache_dir=cache_dir, train_size=100, val_size=7)
    assert torch.equal(small.x_train, dataset.x_train[:100])
    assert torch.equal(small.y_train, dataset.y_train[:100])
    assert torch.equal(small.x_val, dataset.x_val[:7])


@pytest.mark.parametrize(
    ("argument", "value"),
    [("train_size", 0), ("train_size", 4001), ("val_size", 1001), ("val_size", -1)],
)
def test_truncation_out_of_range_names_argument(mnist1d_loaded, argument, value):
    _, cache_dir = mnist1d_loaded
    with pytest.raises(DataError, match=argument):
        load_dataset("mnist1d", cache_dir=cache_dir, **{argument: value})


def test_mnist1d_generation_leaves_global_rngs_alone(tmp_path, monkeypatch):
    import mnist1d.data

    def reseeding_generator(args):
        random.seed(0)
        np.random.seed(0)
        x = np.random.randn(10, 40)
        return {"x": x[:8], "x_test": x[8:], "y": np.arange(8) % 10, "y_test": np.arange(2)}

    monkeypatch.setattr(mnist1d.data, "make_dataset", reseeding_generator)
    random.seed(123)
    np.random.seed(123)
    expected = (random.random(), np.random.rand())
    random.seed(123)
    np.random.seed(123)
    dataset = load_dataset("mnist1d", cache_dir=tmp_path)
    assert (random.random(), np.random.rand()) == expected
    assert dataset.x_train.shape == (8, 1, 40)


def test_mnist1d_unreadable_cache_names_file(mnist1d_loaded, tmp_path):
    _, cache_dir = mnist1d_loaded
    cached = next(cache_dir.iterdir())
    (tmp_path / cached.name).write_bytes(b"not a zip")
    with pytest.raises(DataError, match=cached.name):
        load_dataset("mnist1d", cache_dir=tmp_path)


# ---------------------------------------------------------------------------- MNIST, Fashion-MNIST


@pytest.mark.parametrize("compress", [True, False])
def test_mnist_pixels_follow_written_bytes(tmp_path, compress):
    arrays = make_idx_arrays()
    write_idx_files(tmp_path, arrays, compress=compress)
    dataset = load_dataset("mnist", root=tmp_path)
    train, test = arrays["train-images-idx3-ubyte"], arrays["t10k-images-idx3-ubyte"]
    assert dataset.x_train.shape == (3, 1, 28, 28) and dataset.x_val.shape == (2, 1, 28, 28)
    assert dataset.x_train.dtype == torch.float32
    expected_train = standardized(train, train, axis=(0, 1, 2))
    expected_val = standardized(train, test, axis=(0, 1, 2))
    np.testing.assert_allclose(dataset.x_train[:, 0].numpy(), expected_train, atol=1e-5)
    np.testing.assert_allclose(dataset.x_val[:, 0].numpy(), expected_val, atol=1e-5)
    pixel = (train[1, 5, 17] / 255 - (train / 255).mean()) / (train / 255).std()
    assert dataset.x_train[1, 0, 5, 17].item() == pytest.approx(pixel, abs=1e-5)
    assert dataset.y_train.tolist() == [3, 1, 9] and dataset.y_val.tolist() == [0, 7]
    assert dataset.y_train.dtype == torch.int64


@pytest.mark.parametrize(
    ("name", "folder"),
    [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST"), ("fashion_mnist", "fashion_mnist")],
)
def test_torchvision_layout(tmp_path, name, folder):
    arrays = make_idx_arrays(seed=1)
    write_idx_files(tmp_path / folder / "raw", arrays)
    dataset = load_dataset(name, root=tmp_path)
    assert dataset.name == name
    assert dataset.y_val.tolist() == [0, 7]
    raw = arrays["t10k-images-idx3-ubyte"]
    expected = standardized(arrays["train-images-idx3-ubyte"], raw, axis=(0, 1, 2))
    np.testing.assert_allclose(dataset.x_val[:, 0].numpy(), expected, atol=1e-5)


def test_mnist_truncation(tmp_path):
    write_idx_files(tmp_path, make_idx_arrays())
    full = load_dataset("mnist", root=tmp_path)
    small = load_dataset("mnist", root=tmp_path, train_size=2, val_size=1)
    assert torch.equal(small.x_train, full.x_train[:2]) and small.y_val.tolist() == [0]


def test_truncated_idx_names_file_and_sizes(tmp_path):
    arrays = make_idx_arrays()
    write_idx_files(tmp_path, arrays)
    payload = idx_bytes(arrays["train-images-idx3-ubyte"], 0x803)[:-10]
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(payload))
    with pytest.raises(DataError, match=re.escape("train-images-idx3-ubyte.gz")) as error:
        load_dataset("mnist", root=tmp_path)
    assert str(3 * 28 * 28) in str(error.value) and str(3 * 28 * 28 - 10) in str(error.value)


def test_wrong_magic_names_file(tmp_path):
    arrays = make_idx_arrays()
    write_idx_files(tmp_path, arrays)
    labels = idx_bytes(arrays["t10k-labels-idx1-ubyte"], 0x803)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels))
    with pytest.raises(DataError, match=re.escape("t10k-labels-idx1-ubyte.gz")) as error:
        load_dataset("mnist", root=tmp_path)
    assert "0x00000801" in str(error.value) and "0x00000803" in str(error.value)


def test_count_mismatch_names_file(tmp_path):
    arrays = make_idx_arrays()
    arrays["train-labels-idx1-ubyte"] = np.array([1, 2], dtype=np.uint8)
    write_idx_files(tmp_path, arrays)
    with pytest.raises(DataError, match=re.escape("train-labels-idx1-ubyte.gz")) as error:
        load_dataset("mnist", root=tmp_path)
    assert "expected 3 labels" in str(error.value) and "found 2" in str(error.value)


def test_label_out_of_range_names_file(tmp_path):
    arrays = make_idx_arrays()
    arrays["t10k-labels-idx1-ubyte"] = np.array([0, 10], dtype=np.uint8)
    write_idx_files(tmp_path, arrays)
    with pytest.raises(DataError, match=re.escape("t10k-labels-idx1-ubyte.gz")):
        load_dataset("mnist", root=tmp_path)


@pytest.mark.parametrize(
    "corrupt",
    [lambda blob: b"definitely not gzip", lambda blob: blob[:-12], lambda blob: blob[:20]],
    ids=["not-gzip", "truncated-stream", "cut-deflate"],
)
def test_corrupt_gzip_names_file(tmp_path, corrupt):
    write_idx_files(tmp_path, make_idx_arrays())
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(corrupt(path.read_bytes()))
    with pytest.raises(DataError, match=re.escape("train-images-idx3-ubyte.gz")):
        load_dataset("mnist", root=tmp_path)


def test_missing_file_lists_paths_and_download_hint(tmp_path):
    arrays = make_idx_arrays()
    del arrays["t10k-images-idx3-ubyte"]
    write_idx_files(tmp_path, arrays)
    with pytest.raises(DataError) as error:
        load_dataset("fashion_mnist", root=tmp_path)
    message = str(error.value)
    assert "t10k-images-idx3-ubyte" in message and "download=true" in message
    assert str(tmp_path / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte.gz") in message


def test_verify_md5_rejects_wrong_checksum(tmp_path):
    path = tmp_path / "tiny.bin"
    path.write_bytes(b"normlab")
    verify_md5(path, hashlib.md5(b"normlab").hexdigest())
    with pytest.raises(DataError, match=re.escape("tiny.bin")) as error:
        verify_md5(path, "0" * 32)
    assert "0" * 32 in str(error.value) and hashlib.md5(b"normlab").hexdigest() in str(error.value)


def fake_urlopen(files: dict[str, bytes]):
    def urlopen(url, timeout=None):
        return io.BytesIO(files[url])

    return urlopen


def test_download_fetches_checks_md5_and_loads(tmp_path, monkeypatch):
    arrays = make_idx_arrays()
    source = data.idx.SOURCES["mnist"]
    blobs = {
        f"{stem}.gz": gzip.compress(idx_bytes(array, 0x803 if array.ndim == 3 else 0x801))
        for stem, array in arrays.items()
    }
    monkeypatch.setattr(
        urllib.request,
        "urlopen",
        fake_urlopen({source.url + name: blob for name, blob in blobs.items()}),
    )
    with pytest.raises(DataError, match="md5"):
        load_dataset("mnist", root=tmp_path, download=True)
    assert list(tmp_path.iterdir()) == []  # a file failing its checksum never lands
    fake_md5 = {name: hashlib.md5(blob).hexdigest() for name, blob in blobs.items()}
    checked = data.idx.IdxSource("MNIST", source.url, fake_md5)
    monkeypatch.setitem(data.idx.SOURCES, "mnist", checked)
    dataset = load_dataset("mnist", root=tmp_path, download=True)
    assert dataset.y_train.tolist() == [3, 1, 9]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(blobs)


# ---------------------------------------------------------------------------- CIFAR-10


@pytest.mark.parametrize("layout", [".", "cifar-10-batches-bin", "cifar10/cifar-10-batches-bin"])
def test_cifar_labels_and_pixels(tmp_path, layout):
    train, train_labels, test, test_labels = write_cifar(tmp_path / layout)
    dataset = load_dataset("cifar10", root=tmp_path)
    assert dataset.x_train.shape == (10, 3, 32, 32) and dataset.x_val.shape == (3, 3, 32, 32)
    assert dataset.y_train.tolist() == train_labels.tolist()
    assert dataset.y_val.tolist() == test_labels.tolist()
    scaled = train / 255
    mean, std = scaled.mean(axis=(0, 2, 3)), scaled.std(axis=(0, 2, 3))
    for n, c, h, w in [(0, 0, 0, 0), (3, 1, 5, 31), (9, 2, 31, 7)]:
        expected = (train[n, c, h, w] / 255 - mean[c]) / std[c]
        assert dataset.x_train[n, c, h, w].item() == pytest.approx(expected, abs=1e-5)
    for n, c, h, w in [(0, 2, 10, 11), (2, 0, 31, 31)]:
        expected = (test[n, c, h, w] / 255 - mean[c]) / std[c]
        assert dataset.x_val[n, c, h, w].item() == pytest.approx(expected, abs=1e-5)
    np.testing.assert_allclose(
        dataset.x_train.numpy(), standardized(train, train, axis=(0, 2, 3)), atol=1e-5
    )


def test_cifar_size_not_multiple_of_record_names_file(tmp_path):
    write_cifar(tmp_path)
    with open(tmp_path / "data_batch_3.bin", "ab") as file:
        file.write(b"\x00" * 5)
    with pytest.raises(DataError, match=re.escape("data_batch_3.bin")) as error:
        load_dataset("cifar10", root=tmp_path)
    assert "3073" in str(error.value) and str(2 * 3073 + 5) in str(error.value)


def test_cifar_label_out_of_range_names_file(tmp_path):
    write_cifar(tmp_path)
    records = bytearray((tmp_path / "test_batch.bin").read_bytes())
    records[3073] = 10
    (tmp_path / "test_batch.bin").write_bytes(bytes(records))
    with pytest.raises(DataError, match=re.escape("test_batch.bin")) as error:
        load_dataset("cifar10", root=tmp_path)
    assert "found 10 at example 1" in str(error.value)


def test_cifar_missing_points_at_binary_version(tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"pickle")
    with pytest.raises(DataError, match=re.escape("data_batch_1.bin")) as error:
        load_dataset("cifar10", root=tmp_path)
    assert "download=true" in str(error.value) and "binary version" in str(error.value)


def test_cifar_files_split_over_directories(tmp_path):
    write_cifar(tmp_path / "cifar-10-batches-bin")
    (tmp_path / "cifar-10-batches-bin" / "test_batch.bin").rename(tmp_path / "test_batch.bin")
    with pytest.raises(DataError, match="one directory"):
        load_dataset("cifar10", root=tmp_path)


def tar_gz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def test_cifar_download_extracts_and_loads(tmp_path, monkeypatch):
    source = tmp_path / "source"
    _, train_labels, _, _ = write_cifar(source)
    archive = tar_gz({f"cifar-10-batches-bin/{f}": (source / f).read_bytes() for f in CIFAR_FILES})
    root = tmp_path / "root"
    root.mkdir()
    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen({data.cifar10.URL: archive}))
    monkeypatch.setattr(data.cifar10, "_MD5", hashlib.md5(archive).hexdigest())
    dataset = load_dataset("cifar10", root=root, download=True)
    assert dataset.y_train.tolist() == train_labels.tolist()
    assert (root / "cifar-10-batches-bin" / "test_batch.bin").is_file()
    assert sorted(p.name for p in root.iterdir()) == [
        "cifar-10-batches-bin",
        "cifar-10-binary.tar.gz",
    ]


@pytest.mark.parametrize("has_data_filter", [True, False])
def test_tar_extraction_rejects_paths_outside_root(tmp_path, monkeypatch, has_data_filter):
    if not has_data_filter:
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    archive = tmp_path / "evil.tar.gz"
    archive.write_bytes(tar_gz({"../escaped.txt": b"x"}))
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(DataError, match=re.escape("evil.tar.gz")):
        data.files.extract_tar(archive, dest)
    assert not (tmp_path / "escaped.txt").exists()
    assert list(dest.iterdir()) == []


# ---------------------------------------------------------------------------- real files


@pytest.mark.parametrize(
    ("name", "train_shape", "val_shape"),
    [
        ("fashion_mnist", (60000, 1, 28, 28), (10000, 1, 28, 28)),
        ("mnist", (60000, 1, 28, 28), (10000, 1, 28, 28)),
        ("cifar10", (50000, 3, 32, 32), (10000, 3, 32, 32)),
    ],
)
def test_real_files(name, train_shape, val_shape):
    if not SHARED_DATA.is_dir():
        pytest.skip(f"no real data: {SHARED_DATA} does not exist")
    try:
        dataset = load_dataset(name, root=SHARED_DATA)
    except DataError as error:
        if "found none of" in str(error):
            pytest.skip(f"{name} not in {SHARED_DATA}")
        raise
    assert dataset.x_train.shape == train_shape and dataset.x_val.shape == val_shape
    assert set(dataset.y_train.tolist()) == set(range(10))
    assert abs(dataset.x_train.mean().item()) < 1e-3
    assert abs(dataset.x_train.std().item() - 1) < 1e-2


def test_mnist_5k_reads_its_idx_files_from_its_folder(tmp_path):
    arrays = make_idx_arrays(seed=3)
    write_idx_files(tmp_path / "mnist_5k", arrays)
    dataset = load_dataset("mnist_5k", root=tmp_path)
    assert dataset.name == "mnist_5k" and dataset.input_shape == (1, 28, 28)
    assert dataset.y_train.tolist() == [3, 1, 9] and dataset.y_val.tolist() == [0, 7]
    train = arrays["train-images-idx3-ubyte"][:, None]
    expected = standardized(train, arrays["t10k-images-idx3-ubyte"][:, None], (0, 1, 2, 3))
    np.testing.assert_allclose(dataset.x_val.numpy(), expected, atol=1e-5)


def test_mnist_5k_missing_names_the_file_and_that_nothing_downloads(tmp_path):
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz.*no download mirror"):
        load_dataset("mnist_5k", root=tmp_path, download=True)


def test_the_mnist_5k_config_trains_a_cnn_on_tiny_files(cli, tmp_path):
    arrays = {
        "train-images-idx3-ubyte": np.random.default_rng(0).integers(0, 256, (16, 28, 28)),
        "train-labels-idx1-ubyte": np.arange(16) % 10,
        "t10k-images-idx3-ubyte": np.random.default_rng(1).integers(0, 256, (8, 28, 28)),
        "t10k-labels-idx1-ubyte": np.arange(8) % 10,
    }
    write_idx_files(tmp_path / "data" / "mnist_5k", arrays)
    result = cli(
        "data=mnist_5k",
        f"paths.data={tmp_path / 'data'}",
        "model=cnn",
        "model.width=4",
        "batch_size=4",
        "steps=2",
        "eval_every=2",
        "eval.train_subset=8",
        fast=False,
    )
    assert result.code == 0, result.err
    assert result.summary()["status"] == "completed"


def test_real_mnist_5k_is_the_documented_subset():
    root = SHARED_DATA / "mnist_5k"
    if not root.is_dir():
        pytest.skip(f"no real data: {root} does not exist")
    readme = (root / "README.md").read_text()
    for stem in IDX_STEMS:
        digest = hashlib.md5((root / f"{stem}.gz").read_bytes()).hexdigest()
        assert digest in readme, f"{stem}.gz md5 {digest} is not the README's"
    dataset = load_dataset("mnist_5k", root=SHARED_DATA)
    assert dataset.x_train.shape == (4000, 1, 28, 28) and dataset.x_val.shape == (1000, 1, 28, 28)
    assert torch.bincount(dataset.y_train).tolist() == [400] * 10
    assert torch.bincount(dataset.y_val).tolist() == [100] * 10


def test_a_held_out_validation_split_is_fixed_and_disjoint():
    labels = torch.arange(40) % 10
    dataset = Dataset(
        "toy",
        torch.arange(40.0).view(40, 1, 1),
        labels,
        torch.zeros(5, 1, 1),
        torch.zeros(5, dtype=torch.long),
        10,
    )
    first = data.hold_out_validation(dataset, 0.25)
    again = data.hold_out_validation(dataset, 0.25)
    assert len(first.y_val) == 10 and len(first.y_train) == 30
    assert torch.equal(first.x_val, again.x_val), "the same examples for every run"
    held, kept = set(first.x_val.flatten().tolist()), set(first.x_train.flatten().tolist())
    assert held.isdisjoint(kept) and held | kept == set(range(40))


# ---------------------------------------------------------------------------- samplers


def shuffled_labels(classes: int, per_class: int, seed: int = 0) -> torch.Tensor:
    labels = torch.arange(classes).repeat_interleave(per_class)
    return labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))]


def test_unknown_sampler_names_argument_and_choices():
    with pytest.raises(DataError, match="sampler") as error:
        make_sampler("balanced", torch.zeros(10, dtype=torch.int64), 2, seed=0)
    assert all(kind in str(error.value) for kind in SAMPLERS)


@pytest.mark.parametrize("kind", SAMPLERS)
@pytest.mark.parametrize("batch_size", [0, 11])
def test_batch_size_out_of_range(kind, batch_size):
    with pytest.raises(DataError, match="batch_size"):
        make_sampler(kind, shuffled_labels(2, 5), batch_size, seed=0, classes_per_batch=1)


def test_iid_covers_each_example_once_per_epoch_without_drop_last():
    sampler = make_sampler("iid", shuffled_labels(2, 5), batch_size=3, seed=0, drop_last=False)
    assert sampler.batches_per_epoch == 4
    for epoch in range(3):
        assert sampler.epoch == epoch
        batches = draw(sampler, 4)
        assert [len(b) for b in batches] == [3, 3, 3, 1]
        assert sorted(torch.cat(batches).tolist()) == list(range(10))
        assert all(b.dtype == torch.int64 for b in batches)
    assert sampler.epoch == 3


def test_iid_drop_last_keeps_full_batches_only():
    sampler = make_sampler("iid", shuffled_labels(2, 5), batch_size=3, seed=0)
    first, second = draw(sampler, 3), draw(sampler, 3)
    assert sampler.epoch == 2
    for batches in (first, second):
        assert all(len(b) == 3 for b in batches)
        assert len(set(torch.cat(batches).tolist())) == 9
    assert not torch.equal(torch.cat(first), torch.cat(second))
    assert [len(b) for b in sampler.epoch_batches()] == [3, 3, 3]


def test_same_seed_same_stream_other_seed_other_stream():
    labels = shuffled_labels(10, 20)
    for kind in SAMPLERS:
        stream = draw(make_sampler(kind, labels, 16, seed=3), 30)
        assert_same_batches(stream, draw(make_sampler(kind, labels, 16, seed=3), 30))
        other = draw(make_sampler(kind, labels, 16, seed=4), 30)
        assert not all(torch.equal(a, b) for a, b in zip(stream, other, strict=True))


@pytest.mark.parametrize(
    ("kind", "options"),
    [("iid", {"drop_last": True}), ("iid", {"drop_last": False}), ("non_iid", {})],
)
def test_epoch_batches_deterministic_and_leave_stream_alone(kind, options):
    labels = shuffled_labels(5, 7)

    def fresh():
        return make_sampler(kind, labels, batch_size=4, seed=11, **options)

    reference = draw(fresh(), 30)
    sampler = fresh()
    head = draw(sampler, 3)
    evaluation = sampler.epoch_batches()
    assert_same_batches(evaluation, sampler.epoch_batches())
    assert_same_batches(evaluation, reference[: sampler.batches_per_epoch])
    assert_same_batches(head + draw(sampler, 27), reference)


@pytest.mark.parametrize(
    ("kind", "options"),
    [
        ("iid", {"drop_last": True}),
        ("iid", {"drop_last": False}),
        ("non_iid", {"classes_per_batch": 3}),
    ],
)
def test_state_round_trip_continues_stream_exactly(kind, options):
    labels = shuffled_labels(4, 5)  # 20 examples, batches of 3: 7 draws cross an epoch
    sampler = make_sampler(kind, labels, batch_size=3, seed=5, **options)
    draw(sampler, 7)
    state = roundtrip(sampler.state_dict())
    expected = draw(sampler, 5)
    resumed = make_sampler(kind, labels, batch_size=3, seed=99, **options)
    resumed.load_state_dict(state)
    assert resumed.epoch == 1
    assert_same_batches(draw(resumed, 5), expected)
    assert resumed.epoch == sampler.epoch


def test_state_from_other_configuration_is_rejected():
    labels = shuffled_labels(4, 5)
    state = make_sampler("iid", labels, batch_size=3, seed=0).state_dict()
    with pytest.raises(DataError, match="sampler state"):
        make_sampler("iid", labels, batch_size=4, seed=0).load_state_dict(state)
    with pytest.raises(DataError, match="sampler state"):
        make_sampler("non_iid", labels, batch_size=3, seed=0).load_state_dict(state)


@pytest.mark.parametrize(("k", "batch_size"), [(1, 8), (2, 8), (3, 8), (3, 3), (10, 16)])
def test_non_iid_batches_hold_at_most_k_classes(k, batch_size):
    labels = shuffled_labels(10, 30)
    sampler = make_sampler("non_iid", labels, batch_size, seed=1, classes_per_batch=k)
    seen = set()
    for batch in draw(sampler, 400):
        assert len(batch) == batch_size
        counts = torch.bincount(labels[batch], minlength=10)
        present = counts[counts > 0]
        assert len(present) == k
        assert present.max() - present.min() <= 1
        seen |= set(labels[batch].tolist())
    assert seen == set(range(10))


def test_non_iid_mixes_positions_within_batch():
    labels = shuffled_labels(10, 30)
    sampler = make_sampler("non_iid", labels, 8, seed=0, classes_per_batch=2)
    grouped = [
        labels[batch[:4]].unique().numel() == 1 and labels[batch[4:]].unique().numel() == 1
        for batch in draw(sampler, 200)
    ]
    assert sum(grouped) < 50  # grouped halves would make every one True


def test_non_iid_draws_without_replacement_within_epoch():
    labels = shuffled_labels(2, 6)  # each batch takes 2 of each class: an epoch uses all 12
    sampler = make_sampler("non_iid", labels, 4, seed=2, classes_per_batch=2)
    for _ in range(3):
        assert sorted(torch.cat(draw(sampler, 3)).tolist()) == list(range(12))
    single = make_sampler(
        "non_iid", torch.zeros(12, dtype=torch.int64), 4, seed=2, classes_per_batch=1
    )
    assert sorted(torch.cat(draw(single, 3)).tolist()) == list(range(12))


def test_non_iid_uses_only_classes_present():
    labels = torch.tensor([1, 5, 7] * 6)
    sampler = make_sampler("non_iid", labels, 6, seed=0, classes_per_batch=3)
    assert all(sorted(labels[b].unique().tolist()) == [1, 5, 7] for b in draw(sampler, 10))
    with pytest.raises(DataError, match="classes_per_batch") as error:
        make_sampler("non_iid", labels, 6, seed=0, classes_per_batch=4)
    assert "[1, 3]" in str(error.value)


@pytest.mark.parametrize(("k", "batch_size"), [(0, 8), (11, 16), (5, 4)])
def test_non_iid_classes_per_batch_out_of_range(k, batch_size):
    with pytest.raises(DataError, match="classes_per_batch"):
        make_sampler("non_iid", shuffled_labels(10, 3), batch_size, seed=0, classes_per_batch=k)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", SAMPLERS)
def test_samplers_serve_indices_on_the_labels_device(kind):
    labels = shuffled_labels(10, 20).cuda()
    sampler = make_sampler(kind, labels, 16, seed=0)
    batch = sampler.next_indices()
    assert batch.device == labels.device and batch.dtype == torch.int64
    draw(sampler, 20)
    state = roundtrip(sampler.state_dict())
    expected = draw(sampler, 5)
    resumed = make_sampler(kind, labels, 16, seed=1)
    resumed.load_state_dict(state)
    assert_same_batches(draw(resumed, 5), expected)
    assert all(b.device == labels.device for b in resumed.epoch_batches())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_dataset_loads_onto_cuda(tmp_path):
    write_idx_files(tmp_path, make_idx_arrays())
    dataset = load_dataset("mnist", root=tmp_path, device="cuda")
    assert all(t.is_cuda for t in (dataset.x_train, dataset.y_train, dataset.x_val, dataset.y_val))
    assert dataset.to("cpu").x_train.device.type == "cpu"


@pytest.mark.parametrize(
    ("kind", "options"),
    [("iid", {"drop_last": True}), ("iid", {"drop_last": False}), ("non_iid", {})],
)
def test_a_stack_of_samplers_serves_each_ones_own_stream(kind, options):
    """Three seeds' samplers stacked, over three epochs: each column is the batch that seed's
    sampler serves alone (a twin drawn one batch at a time), and each sampler's state after
    is its twin's, so a packed run's checkpoint resumes its stream."""
    labels = shuffled_labels(3, 7)  # 21 examples: batch 4 leaves a partial batch

    def samplers():
        return [make_sampler(kind, labels, 4, seed=seed, **options) for seed in (0, 1, 5)]

    stacked, alone = samplers(), samplers()
    stack = SamplerStack(stacked)
    assert stack.stacks
    for _ in range(3 * stacked[0].batches_per_epoch + 2):
        batches = stack.next_indices()  # (B, S): a column per sampler
        for column, twin in zip(batches.T, alone, strict=True):
            assert torch.equal(column, twin.next_indices())
    for ours, twin in zip(stacked, alone, strict=True):
        assert _same(ours.state_dict(), twin.state_dict())


def _same(a, b) -> bool:
    """Equal, recursively through dicts and lists, tensors element for element."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def test_samplers_out_of_step_are_asked_one_by_one():
    labels = shuffled_labels(3, 7)
    ahead, behind = (make_sampler("iid", labels, 4, seed=s) for s in (0, 1))
    ahead.next_indices()
    twins = [make_sampler("iid", labels, 4, seed=s) for s in (0, 1)]
    twins[0].next_indices()
    stack = SamplerStack([ahead, behind])
    assert not stack.stacks
    columns = stack.next_indices().T
    assert all(torch.equal(c, t.next_indices()) for c, t in zip(columns, twins, strict=True))
