"""Data-parallel runs (``distributed.world_size = N > 1``): N ranks, one process each, train one
model on slices of one global batch.

Ranks: started here with ``torch.multiprocessing`` (:func:`spawn`), or, under SLURM with
``tasks_per_node`` (or ``nodes``) giving N tasks, by SLURM itself, each task one rank
(:func:`slurm_rank` reads ``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID``). They meet
through a ``FileStore`` beside the run's directory (:func:`rendezvous_file`: no port to choose,
and a shared file system is all SLURM needs), on gloo (CPU) or NCCL (CUDA, one device per local
rank), with ``distributed.timeout_s`` as every collective's limit. A rank uses one torch thread
unless ``threads`` says otherwise.

Each step every rank draws the same global batch from the run's sampler (one permutation per
seed and epoch) and keeps its contiguous slice (:func:`shard`); its loss is its examples' summed
loss over the global batch size, so the ranks' gradients, summed by one all-reduce
(:class:`DataParallelTrainer`), are exactly the global batch's mean-loss gradient. With
``norm.sync`` the norm layers' statistics are the global batch's (:mod:`normlab.norms.sync`),
and a run trains as one process at ``batch_size`` would, up to rounding; without it each rank
normalizes with its own slice's statistics, as ghost batches of ``batch_size / world_size`` in
one process (``norm.virtual_batch_size``) would.

Running buffers: with ``norm.sync`` every rank holds the same ones (each absorbs the global
statistics). Without it each rank's absorb its own slices; at every logged row they are
averaged over the ranks (all-reduce), which for an EMA of per-slice statistics is exactly what
one process with ghost batches holds, and evaluation, checkpoints and precise-BN use that
average. Only rank 0 evaluates (with local statistics: a train-mode evaluation normalizes its
batches of ``batch_size`` alone), writes the record, logs to wandb and shows progress; it
decides a divergence found at a logged row for every rank. The training loss recorded is the
global batch's; the training accuracy is rank 0's slice's. Stop signals take effect at the
same step on every rank (a flag in the per-step all-reduce).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import Tensor, nn

from normlab.config.schema import DistributedConfig, RunConfig
from normlab.progress import PROGRESS_DIR
from normlab.trainer import Trainer

RENDEZVOUS_DIR = ".rendezvous"
# how long the other ranks may take to record their own failure after one rank fails
GRACE_PERIOD_S = 10.0


@dataclass(frozen=True)
class Rank:
    """This process's place among the run's ranks."""

    rank: int
    world_size: int
    local_rank: int = 0
    local_world_size: int = 1  # ranks on this machine

    @property
    def leads(self) -> bool:
        return self.rank == 0


def slurm_rank(environ: dict[str, str] | None = None) -> Rank | None:
    """The rank SLURM started this process as, or None outside a SLURM step of several tasks."""
    env = os.environ if environ is None else environ
    tasks = int(env.get("SLURM_NTASKS", "1") or 1)
    if tasks <= 1 or "SLURM_PROCID" not in env:
        return None
    local = int(env.get("SLURM_LOCALID", "0") or 0)
    return Rank(int(env["SLURM_PROCID"]), tasks, local, _most_tasks_per_node(env, tasks))


def _most_tasks_per_node(env: dict[str, str], tasks: int) -> int:
    """The largest count in SLURM_TASKS_PER_NODE ("2(x3),1": 2 tasks on each of 3 nodes, then 1),
    the same in every task of the step."""
    counts = [int(item.split("(")[0]) for item in env.get("SLURM_TASKS_PER_NODE", "").split(",")
              if item.split("(")[0].isdigit()]  # fmt: skip
    return max(counts, default=tasks)


def slurm_tag(environ: dict[str, str] | None = None) -> str:
    """A name every task of one SLURM step (and of no other, requeues included) agrees on."""
    env = os.environ if environ is None else environ
    parts = ("SLURM_JOB_ID", "SLURM_STEP_ID", "SLURM_RESTART_COUNT")
    return "slurm-" + "-".join(env.get(key, "0") for key in parts)


def rendezvous_file(run_dir: Path, tag: str) -> Path:
    """The FileStore's file for one launch of the run: beside its directory, which the leading
    rank may clear, and named per launch, so a file left by a crashed launch is never reused."""
    return run_dir.parent / RENDEZVOUS_DIR / f"{run_dir.name}-{tag}"


def fresh_rendezvous(run_dir: Path) -> Path:
    path = rendezvous_file(run_dir, f"{os.getpid()}-{time.time_ns()}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    return path


def backend(spec: DistributedConfig, device: torch.device, rank: Rank) -> str:
    """NCCL where every CUDA rank has a device of its own; gloo on CPU and where CUDA ranks
    share devices (NCCL refuses two ranks on one device)."""
    if spec.backend != "auto":
        return spec.backend
    own_device = device.type == "cuda" and rank.local_world_size <= torch.cuda.device_count()
    return "nccl" if own_device else "gloo"


def rank_device(device: torch.device, rank: Rank) -> torch.device:
    """A CUDA rank's device (``cuda:<local rank>``, shared round-robin when the machine has
    fewer devices than ranks); a CPU rank's is the CPU."""
    if device.type != "cuda":
        return device
    index = rank.local_rank % torch.cuda.device_count()
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def init_process_group(
    rank: Rank, store_file: Path, spec: DistributedConfig, device: torch.device
) -> None:
    # torch imports its compiler (torch._dynamo) lazily, with the first optimizer. Imported after
    # a group exists, it holds references to the group, so destroy_process_group would not stop
    # gloo's worker threads; one that frees a collective's tensors while the interpreter exits
    # aborts the rank ("terminate called without an active exception", 1 run in 10 here).
    torch.compiler.list_backends()  # imports it first: the group stays destroyable
    store_file.parent.mkdir(parents=True, exist_ok=True)
    store = dist.FileStore(str(store_file), rank.world_size)
    dist.init_process_group(
        backend(spec, device, rank),
        store=store,
        rank=rank.rank,
        world_size=rank.world_size,
        timeout=timedelta(seconds=spec.timeout_s),
    )


def close_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


class RankFailed(Exception):
    """A rank of a spawned run raised or died: which one and why."""

    def __init__(self, rank: int, reason: str) -> None:
        super().__init__(f"rank {rank} failed: {reason}")
        self.rank, self.reason = rank, reason


def spawn(entry: Callable[..., Any], world_size: int, store_file: Path, args: tuple) -> None:
    """Run ``entry(rank, *args)`` in ``world_size`` fresh processes and wait for them all. A
    rank that raises or dies ends the others (after :data:`GRACE_PERIOD_S`) and raises
    :class:`RankFailed` here, naming the rank that failed first (the others then fail on the
    broken collective). A Ctrl-C reaches every rank, which stop together
    (:class:`DataParallelTrainer`); it is raised here once they have."""
    context = mp.start_processes(
        entry, args=args, nprocs=world_size, join=False, start_method="spawn"
    )
    interrupted = False
    try:
        while True:
            try:
                if context.join(grace_period=GRACE_PERIOD_S):
                    break
            except KeyboardInterrupt:
                interrupted = True
            except (mp.ProcessRaisedException, mp.ProcessExitedException) as error:
                if interrupted:  # rank 0 ends an interrupted run by raising KeyboardInterrupt
                    raise KeyboardInterrupt from None
                raise _first_failure(context, store_file, error) from error
    finally:
        for rank in range(world_size):
            failure_file(store_file, rank).unlink(missing_ok=True)
    if interrupted:
        raise KeyboardInterrupt


def failure_file(store_file: Path, rank: int) -> Path:
    return store_file.with_name(f"{store_file.name}.rank{rank}")


def note_failure(store_file: Path, rank: int, error: BaseException) -> None:
    """Leave a rank's traceback beside the store, stamped, for :func:`spawn` to tell the
    rank that failed first from those the broken collectives failed after it."""
    text = "".join(traceback.format_exception(error)[-6:])
    failure_file(store_file, rank).write_text(f"{time.time()}\n{text}")


def _first_failure(context: Any, store_file: Path, error: Exception) -> RankFailed:
    for rank, process in enumerate(context.processes):
        code = process.exitcode
        if code is not None and code < 0 and -code != signal.SIGTERM:  # killed, not ended by us
            return RankFailed(rank, f"died from signal {signal.Signals(-code).name}")
    noted = []
    for rank in range(len(context.processes)):
        path = failure_file(store_file, rank)
        if path.exists():
            stamp, _, text = path.read_text().partition("\n")
            noted.append((float(stamp), rank, text))
    if noted:
        _, rank, text = min(noted)
        return RankFailed(rank, text)
    return RankFailed(getattr(error, "error_index", 0), str(error))


def quiet_unless_leading(rank: Rank) -> None:
    """Only rank 0 reports progress (a sweep's progress file included)."""
    if not rank.leads:
        os.environ.pop(PROGRESS_DIR, None)


def shard(indices: Tensor, rank: int, world_size: int) -> Tensor:
    """Rank ``rank``'s contiguous slice of a global batch of indices (equal slices: the
    config checks that the world size divides the batch size)."""
    size = len(indices) // world_size
    return indices[rank * size : (rank + 1) * size]


def statistics_batch_size(run: RunConfig, examples: int) -> int:
    """The examples behind one batch statistic of a data-parallel run, ``examples`` being one
    process's: the global batch's with ``norm.sync``, else at most a rank's slice."""
    if run.distributed.world_size == 1 or run.norm.sync:
        return examples
    return min(examples, run.batch_size // run.distributed.world_size)


def identity(run: RunConfig) -> dict[str, Any]:
    """The record's fields of a data-parallel run (none for one process)."""
    world = run.distributed.world_size
    if world == 1:
        return {}
    examples = run.norm.record(run.batch_size)["statistics_batch_size"]
    return {
        "world_size": world,
        "norm_sync": run.norm.sync,
        "statistics_batch_size": statistics_batch_size(run, examples),
    }


@contextlib.contextmanager
def local_statistics(layers: Iterator[nn.Module]) -> Iterator[None]:
    """Layers normalize with this rank's own statistics inside (rank 0's evaluation)."""
    synced = [layer for layer in layers if getattr(layer, "sync_statistics", False)]
    for layer in synced:
        layer.sync_statistics = False
    try:
        yield
    finally:
        for layer in synced:
            layer.sync_statistics = True


class Unrecorded:
    """The record of a rank that writes none: the run's directory, nothing logged."""

    class _Metrics:
        rows_written = 0

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.metrics = self._Metrics()

    def log(self, row: dict[str, Any], step: int) -> None:
        pass


class DataParallelTrainer(Trainer):
    """The one loop, each step on this rank's slice with the gradients summed over ranks."""

    def __init__(self, *args: Any, rank: Rank, **kwargs: Any) -> None:
        self.rank = rank
        super().__init__(*args, **kwargs)
        self.sync = self.run.norm.sync
        for layer in self.norms.values():
            layer.sync_statistics = self.sync
        examples = self.run.norm.record(self.run.batch_size)["statistics_batch_size"]
        per_statistic = statistics_batch_size(self.run, examples)
        self.values_per_channel = {
            name: values // examples * per_statistic
            for name, values in self.values_per_channel.items()
        }
        with torch.no_grad():
            for tensor in (*self.model.parameters(), *self.model.buffers()):
                dist.broadcast(tensor, src=0)

    # the stop a signal asks for takes effect only once every rank has heard of it
    @property
    def stop_signal(self) -> str | None:
        return self.__dict__.get("_agreed_stop")

    @stop_signal.setter
    def stop_signal(self, value: str | None) -> None:
        if value is None:
            self.__dict__["_agreed_stop"] = None
        self.__dict__["_local_stop"] = value

    def _batch(self) -> tuple[Tensor, Tensor]:
        index = shard(self.sampler.next_indices(), self.rank.rank, self.rank.world_size)
        return self.data.x_train[index], self.data.y_train[index]

    def _loss(self, logits: Tensor, y: Tensor) -> Tensor:
        """This rank's share of the global batch's mean loss (summed over ranks, it is that)."""
        return F.cross_entropy(logits.float(), y, reduction="sum") / self.run.batch_size

    def _step_loss(self, loss: Tensor) -> Tensor:
        return self._sum_over_ranks(loss)

    def _sum_over_ranks(self, loss: Tensor) -> Tensor:
        """Sum every gradient, the loss and the ranks' stop flags over the ranks in one
        all-reduce; return the global loss."""
        grads = [p.grad for p in self.params if p.grad is not None]
        stop = 1.0 if self.__dict__.get("_local_stop") else 0.0
        tail = torch.stack((loss.to(grads[0].dtype), loss.new_tensor(stop, dtype=grads[0].dtype)))
        flat = torch.cat([g.reshape(-1) for g in grads] + [tail])
        dist.all_reduce(flat)
        for grad, flat_grad in zip(grads, flat[:-2].split([g.numel() for g in grads]), strict=True):
            grad.copy_(flat_grad.view_as(grad))
        if flat[-1].item() > 0 and self.stop_signal is None:
            self.__dict__["_agreed_stop"] = self.__dict__.get("_local_stop") or "SIGTERM"
        return flat[-2].to(loss.dtype)

    def _log_row(self) -> None:
        if not self.sync:
            self._average_running_buffers()
        if self.rank.leads:
            with local_statistics(self.norms.values()):
                super()._log_row()
        else:
            self.window.collect()
            self.last_logged_step = self.step
            self.evaluations += 1
        decision = [self.divergence]
        dist.broadcast_object_list(decision, src=0)
        self.divergence = decision[0]

    @torch.no_grad()
    def _average_running_buffers(self) -> None:
        buffers = [
            b
            for layer in self.norms.values()
            for name, b in layer.named_buffers()
            if b.is_floating_point()
        ]
        if not buffers:
            return
        flat = torch.cat([b.reshape(-1) for b in buffers])
        dist.all_reduce(flat)
        flat /= self.rank.world_size
        for buffer, part in zip(buffers, flat.split([b.numel() for b in buffers]), strict=True):
            buffer.copy_(part.view_as(buffer))

    def save_checkpoint(self) -> None:
        if self.rank.leads:
            super().save_checkpoint()
