"""A classification data set held whole as tensors, and what is done to one once loaded: cut to
a size, a validation split held out of its training examples, moved to a device."""

from __future__ import annotations

import numbers
from dataclasses import dataclass, replace

import numpy as np
import torch


class DataError(ValueError):
    """A data file or data argument is not what it must be; the message names it, what was
    expected and what was found."""


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


Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # x_train, y_train, x_val, y_val


def from_arrays(name: str, arrays: Arrays, num_classes: int) -> Dataset:
    """A :class:`Dataset` sharing the memory of numpy arrays (x_train, y_train, x_val, y_val)."""
    x_train, y_train, x_val, y_val = (torch.from_numpy(array) for array in arrays)
    return Dataset(name, x_train, y_train, x_val, y_val, num_classes)


def truncated(data: Dataset, train_size: int | None, val_size: int | None) -> Dataset:
    """The first ``train_size`` training and ``val_size`` validation examples (all when None);
    each must be in [1, available]."""
    train_count = checked_size("train_size", train_size, len(data.y_train), "train")
    val_count = checked_size("val_size", val_size, len(data.y_val), "validation")
    return replace(
        data,
        x_train=data.x_train[:train_count],
        y_train=data.y_train[:train_count],
        x_val=data.x_val[:val_count],
        y_val=data.y_val[:val_count],
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


def checked_int(argument: str, value: object, low: int, high: int, high_means: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise DataError(f"{argument}: expected an integer, found {value!r}")
    if not low <= value <= high:
        raise DataError(
            f"{argument}: expected an integer in [{low}, {high}] ({high_means}), found {value}"
        )
    return int(value)


def checked_size(argument: str, size: int | None, available: int, split: str) -> int:
    if size is None:
        return available
    return checked_int(argument, size, 1, available, f"the number of {split} examples")
