"""The data sets normlab knows, each registered by its own module, and the data sets a user
brings from outside the package.

A :class:`DataSet` is what the rest of normlab needs of one: the shape of one example and the
number of classes, known before any file is read (the config is checked and the model built
on the meta device before loading), and how to load it whole onto the CPU.

A run's ``data`` config node becomes a :class:`DataSet` through :func:`choose`: either
``name: NAME`` of a registered data set, or ``_target_: package.module.function`` (a file
``NAME.yaml`` in the ``data`` group of a user's config directory) with the target's keywords
under ``options`` and the declared ``input_shape`` and ``num_classes``. The target is called as
``function(**options)`` and returns a :class:`~normlab.data.dataset.Dataset` of CPU tensors;
:func:`load_dataset` checks it against what was declared, cuts it to ``train_size`` /
``val_size`` and moves it to the device, as for the registered ones.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from normlab import targets
from normlab.data.dataset import DataError, Dataset, truncated
from normlab.errors import ConfigError

# (root, cache_dir, download) -> the whole data set on the CPU; root defaults to cache_dir/NAME
Loader = Callable[[Path, Path, bool], Dataset]


@dataclass(frozen=True)
class DataSet:
    """One data set: its name, the shape of one example (no batch dimension), its number of
    classes, its loader and, for one from outside the package, the target it calls."""

    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    load: Loader
    target: str | None = None


_SETS: dict[str, DataSet] = {}


def register(data_set: DataSet) -> DataSet:
    if data_set.name in _SETS:
        raise ValueError(f"data set {data_set.name!r} is registered twice")
    _SETS[data_set.name] = data_set
    return data_set


def names() -> tuple[str, ...]:
    """Every registered data set, in registration order."""
    return tuple(_SETS)


def get(name: str) -> DataSet:
    if name not in _SETS:
        raise DataError(f"data.name: expected one of {names()}, found {name!r}")
    return _SETS[name]


def choose(
    name: str,
    target: str | None = None,
    options: Mapping[str, Any] | None = None,
    input_shape: Sequence[int] | None = None,
    num_classes: int | None = None,
) -> DataSet:
    """The data set a run's ``data`` node names: registered (no ``target``), or from outside by
    ``target``, named after its YAML file. Raises :class:`ConfigError` naming the bad key."""
    options = dict(options or {})
    if target is None:
        if name not in _SETS:
            allowed = f"one of {', '.join(_SETS)}, or a data config with _target_"
            raise ConfigError("data.name", name, allowed)
        for key, value in (("options", options), ("input_shape", input_shape)):
            if value:
                raise ConfigError(f"data.{key}", value, f"empty: {name} is a registered data set")
        if num_classes is not None:
            raise ConfigError("data.num_classes", num_classes, f"null: {name} knows its own")
        return _SETS[name]
    if name in _SETS:
        raise ConfigError(
            "data.name", name, f"a name no registered data set has ({', '.join(_SETS)})"
        )
    function = targets.locate("data._target_", target)
    targets.check_call("data", target, function, (), options)
    shape = _declared_shape(input_shape)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError(
            "data.num_classes", num_classes, "an integer >= 2: a data set with _target_ declares it"
        )

    def load(root: Path, cache_dir: Path, download: bool) -> Dataset:
        return _call(target, function, options)

    return DataSet(name, shape, num_classes, load, target)


def load_dataset(
    name: str | DataSet,
    root: str | Path | None = None,
    cache_dir: str | Path = ".cache/normlab",
    download: bool = False,
    device: str | torch.device = "cpu",
    train_size: int | None = None,
    val_size: int | None = None,
) -> Dataset:
    """Load data set ``name`` (registered, or a :class:`DataSet` from :func:`choose`) onto
    ``device``: the first ``train_size`` training and ``val_size`` validation examples.

    Files of a registered data set are looked for under ``root`` (default:
    ``cache_dir/<name>``); with ``download=True`` the missing ones are fetched from the
    canonical mirror and checked against known MD5 sums. Each module says how its data set is
    standardized; statistics come from the full train split before truncation, so
    ``train_size=k`` gives exactly the first k examples of the full load.
    """
    data_set = name if isinstance(name, DataSet) else get(name)
    data_root = Path(cache_dir) / data_set.name if root is None else Path(root)
    data = data_set.load(data_root, Path(cache_dir), download)
    _check_loaded(data_set, data)
    return truncated(data, train_size, val_size).to(device)


def _declared_shape(input_shape: Sequence[int] | None) -> tuple[int, ...]:
    shape = tuple(input_shape or ())
    if not shape or not all(isinstance(n, int) and not isinstance(n, bool) for n in shape):
        allowed = "the shape of one example, e.g. [1, 28, 28]: a data set with _target_ declares it"
        raise ConfigError("data.input_shape", input_shape, allowed)
    if min(shape) < 1:
        raise ConfigError("data.input_shape", list(shape), "positive sizes")
    return shape


def _call(target: str, function: Callable[..., Any], options: dict[str, Any]) -> Dataset:
    """The target's data set; whatever it raises is reported in one line, as a data error."""
    try:
        data = function(**options)
    except DataError:
        raise
    except Exception as error:  # the user's code: any failure is a data error of this target
        reason = (str(error).strip().splitlines() or [""])[-1]
        raise DataError(f"data._target_ {target}: {type(error).__name__}: {reason}") from None
    if not isinstance(data, Dataset):
        raise DataError(
            f"data._target_ {target}: expected a normlab.data.Dataset, found {type(data).__name__}"
        )
    return data


def _check_loaded(data_set: DataSet, data: Dataset) -> None:
    """That a loaded data set is what its config declared (a registered one always is)."""
    source = data_set.target or data_set.name
    if data.num_classes != data_set.num_classes:
        raise DataError(
            f"{source}: expected num_classes={data_set.num_classes} as declared, "
            f"found {data.num_classes}"
        )
    for split in ("train", "val"):
        x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
        if tuple(x.shape[1:]) != data_set.input_shape:
            raise DataError(
                f"{source}: expected x_{split} of shape (N, *{data_set.input_shape}) as declared, "
                f"found {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise DataError(f"{source}: expected floating x_{split}, found {x.dtype}")
        if y.dtype != torch.int64 or y.shape != (len(x),):
            raise DataError(
                f"{source}: expected y_{split} int64 of shape ({len(x)},), "
                f"found {y.dtype} of shape {tuple(y.shape)}"
            )
        if len(y) and not 0 <= int(y.min()) <= int(y.max()) < data_set.num_classes:
            raise DataError(
                f"{source}: expected y_{split} in [0, {data_set.num_classes}), "
                f"found [{int(y.min())}, {int(y.max())}]"
            )
