"""Samplers that cut a data set held on the device into index batches: an endless,
reproducible, resumable stream of int64 index tensors on the labels' device."""

from __future__ import annotations

import functools
import math
from typing import Protocol

import torch

from normlab.data.dataset import DataError, checked_int

SAMPLERS = ("iid", "non_iid")


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
        self.batch_size = checked_int(
            "batch_size", batch_size, 1, len(labels), "the number of examples"
        )
        self.seed = seed
        self.device = labels.device
        self.epoch = 0
        self._position = 0
        self._generator = torch.Generator().manual_seed(seed)
        self._order = torch.empty(0, dtype=torch.int64)

    @functools.cached_property
    def batches_per_epoch(self) -> int:  # read every step: len() of a tensor costs a microsecond
        return len(self.labels) // self.batch_size

    def next_indices(self) -> torch.Tensor:
        """The next batch of the training stream: int64 indices on the labels' device."""
        start = self._position * self.batch_size
        batch = self._order[start : start + self.batch_size]
        self._advance()
        return batch

    def _advance(self) -> None:
        """Past the batch just served; a new epoch's order after its last."""
        self._position += 1
        if self._position == self.batches_per_epoch:
            self.epoch += 1
            self._position = 0
            self._begin_epoch()

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


class SamplerStack:
    """The batches of S samplers side by side, ``(B, S)`` indices a step (column ``s``: sampler
    ``s``'s batch; a packed model's seeds, :mod:`normlab.packed_trainer`), each sampler's stream
    unchanged: its epochs' orders are stacked once an epoch and a step is one slice of them,
    while every sampler still moves past each batch, so its state is the one it would have
    alone. Samplers of other kinds, or not in step with each other, are asked one by one."""

    def __init__(self, samplers: list[Sampler]) -> None:
        self.samplers = samplers
        first = samplers[0]
        self.stacks = all(type(s) is type(first) for s in samplers) and all(
            isinstance(s, _EpochSampler)
            and (s.batch_size, s.batches_per_epoch, s.epoch, s._position)
            == (first.batch_size, first.batches_per_epoch, first.epoch, first._position)
            for s in samplers
        )
        self._epoch = -1

    def next_indices(self) -> torch.Tensor:
        """Each sampler's next batch, one column each."""
        if not self.stacks:
            return torch.stack([s.next_indices() for s in self.samplers], dim=1)
        first = self.samplers[0]
        if self._epoch != first.epoch:
            self._orders = torch.stack([s._order for s in self.samplers], dim=1)
            self._epoch = first.epoch
        start = first._position * first.batch_size
        batch = self._orders[start : start + first.batch_size]
        for sampler in self.samplers:
            sampler._advance()
        return batch


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

    @functools.cached_property
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
        self.classes_per_batch = checked_int(
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
