"""MNIST-1D (Greydanus 2020): 4000 train / 1000 test sequences of length 40 in 10 classes,
generated procedurally by the ``mnist1d`` package (no files, no network) and cached as an
``.npz`` in the cache directory. Standardized as the generator leaves it (zero mean, unit std
over its 5000 train+test examples together); ``root`` and ``download`` do not apply."""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import zipfile
from importlib import metadata
from pathlib import Path

import numpy as np

from normlab.data.dataset import Arrays, DataError, Dataset, from_arrays
from normlab.data.files import atomic_file
from normlab.data.registry import DataSet, register
from normlab.files import atomic_write_text


def load(root: Path, cache_dir: Path, download: bool) -> Dataset:
    return from_arrays("mnist1d", _arrays(cache_dir), 10)


register(DataSet("mnist1d", (1, 40), 10, load))


def _arrays(cache_dir: Path) -> Arrays:
    args = _generator_args(cache_dir)
    path = _mnist1d_cache_path(cache_dir, args)
    if path.exists():
        return _read_mnist1d_cache(path)
    arrays = _generate_mnist1d(args)
    with atomic_file(path) as file:
        np.savez(file, **dict(zip(_MNIST1D_KEYS, arrays, strict=True)))
    return arrays


def _generator_args(cache_dir: Path) -> dict:
    """The generator's default arguments, read once per ``mnist1d`` version from the package
    and kept beside the data: importing ``mnist1d.data`` (it imports matplotlib and requests)
    costs seconds in every process, a data-parallel run's every rank among them."""
    path = cache_dir / f"mnist1d_args_{metadata.version('mnist1d')}.json"
    if path.exists():
        with contextlib.suppress(OSError, ValueError):
            return json.loads(path.read_text())
    import mnist1d.data

    args = vars(mnist1d.data.get_dataset_args())
    cache_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(args, sort_keys=True))
    return args


_MNIST1D_KEYS = ("x_train", "y_train", "x_val", "y_val")


def _mnist1d_cache_path(cache_dir: Path, args: dict) -> Path:
    """The cache file for the generator `args`: every argument but the download URL, and the
    generator's version, enter the name, so changing any of them never reuses a stale file."""
    key = {k: v for k, v in args.items() if k != "url"}
    key["mnist1d_version"] = metadata.version("mnist1d")
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    name = f"mnist1d_n{args['num_samples']}_seed{args['seed']}_len{args['final_seq_length']}"
    return cache_dir / f"{name}_{digest}.npz"


def _generate_mnist1d(args: dict) -> Arrays:
    import mnist1d.data
    from mnist1d.utils import ObjectView

    # make_dataset reseeds the global RNGs; restore them so loading data never changes the
    # random stream of the run that loads it.
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        raw = mnist1d.data.make_dataset(ObjectView(dict(args)))
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
    return (
        np.asarray(raw["x"], dtype=np.float32)[:, None, :],
        np.asarray(raw["y"], dtype=np.int64),
        np.asarray(raw["x_test"], dtype=np.float32)[:, None, :],
        np.asarray(raw["y_test"], dtype=np.int64),
    )


def _read_mnist1d_cache(path: Path) -> Arrays:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = tuple(archive[key] for key in _MNIST1D_KEYS)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        raise DataError(
            f"{path}: expected a MNIST-1D cache with arrays {_MNIST1D_KEYS}, found an unreadable "
            f"file ({error}); delete it to regenerate"
        ) from error
    return arrays
