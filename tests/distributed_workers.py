"""The ranks' side of tests/test_distributed.py's layer checks: spawned, so kept light to import
(torch and the layers only)."""

from __future__ import annotations

from datetime import timedelta

import torch
import torch.distributed as dist

from normlab.norms.batch import BatchNorm
from normlab.norms.mabn import MovingAverageBatchNorm
from normlab.norms.moving_average import MovingAverageNorm
from normlab.norms.renorm import BatchRenorm


def randomize_affine(layer, seed=0):
    """As conftest's (not imported here: a spawned rank would import Hydra with it)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.weight.copy_(torch.rand(layer.weight.shape, generator=g) + 0.5)
        layer.bias.copy_(torch.randn(layer.bias.shape, generator=g))
    return layer


def _layer_cases():
    """(name, layer factory, rows per rank, shape after the batch dim, steps)."""
    return [
        ("batch", lambda: BatchNorm(4), (3, 5), (4, 3)),
        ("batch, an empty rank", lambda: BatchNorm(4), (6, 0), (4,)),
        ("renorm", lambda: BatchRenorm(4, rmax=1.2, dmax=0.1), (3, 5), (4, 3)),
        ("moving_average", lambda: MovingAverageNorm(4), (2, 6), (4, 3)),
        ("moving_average after", lambda: MovingAverageNorm(4, update="after"), (5, 3), (4,)),
        (
            "moving_average through batch",
            lambda: MovingAverageNorm(4, grad_through_batch=True),
            (3, 5),
            (4, 3),
        ),
        ("mabn", lambda: MovingAverageBatchNorm(4, buffer_size=1, warmup_iters=0), (3, 5), (4, 3)),
    ]


def _buffers(layer):
    return {k: v for k, v in layer.state_dict().items() if k not in ("weight", "bias")}


def _same_start(layer, seed):
    randomize_affine(layer, seed)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():  # away from the 0/1 start, so r, d and the EMAs all matter
        layer.running_mean.copy_(torch.randn(4, generator=g) * 0.3)
        if isinstance(layer, BatchRenorm):
            layer.running_std.copy_(torch.rand(4, generator=g) + 0.7)
        else:
            layer.running_var.copy_(torch.rand(4, generator=g) + 0.7)
    return layer


def _check_synced_layers(rank: int) -> None:
    for case, (name, make, rows, shape) in enumerate(_layer_cases()):
        reference, synced = _same_start(make(), case), _same_start(make(), case)
        reference.compiled_step = False  # one process: the layer's own tested path
        synced.sync_statistics = True
        start = sum(rows[:rank])
        for step in range(3):
            g = torch.Generator().manual_seed(1000 * case + step)
            x = torch.randn(sum(rows), *shape, generator=g) * 2 + 1
            grad_out = torch.randn(x.shape, generator=g)
            whole = x.clone().requires_grad_()
            expected = reference(whole)
            (expected * grad_out).sum().backward()
            mine = x[start : start + rows[rank]].clone().requires_grad_()
            y = synced(mine)
            (y * grad_out[start : start + rows[rank]]).sum().backward()
            where = f"{name}, step {step}, rank {rank}"
            mine_rows = slice(start, start + rows[rank])
            torch.testing.assert_close(y, expected[mine_rows], msg=f"{where}: output")
            torch.testing.assert_close(mine.grad, whole.grad[mine_rows], msg=f"{where}: grad x")
            for param, ref in ((synced.weight, reference.weight), (synced.bias, reference.bias)):
                summed = param.grad.clone()
                dist.all_reduce(summed)
                torch.testing.assert_close(summed, ref.grad, msg=f"{where}: parameter grad")
                param.grad, ref.grad = None, None
            for key, value in _buffers(reference).items():
                held = _buffers(synced)[key]
                torch.testing.assert_close(held, value, msg=f"{where}: {key}")
                others = [torch.empty_like(held) for _ in range(2)]
                dist.all_gather(others, held)
                assert torch.equal(others[0], others[1]), f"{where}: every rank holds {key}"


def _check_batch_against_torch(rank: int) -> None:
    """Synchronized ``batch`` against torch.nn.BatchNorm1d on the whole batch (float64)."""
    x = torch.randn(10, 4, 5, generator=torch.Generator().manual_seed(5))
    torch_bn = randomize_affine(torch.nn.BatchNorm1d(4), 9)
    synced = randomize_affine(BatchNorm(4), 9)
    synced.sync_statistics = True
    expected = torch_bn(x)
    mine = synced(x[rank * 4 : (rank + 1) * 4 + 2 * rank])  # rows 0-3 and 4-9
    torch.testing.assert_close(mine, expected[rank * 4 : (rank + 1) * 4 + 2 * rank])
    torch.testing.assert_close(synced.running_mean, torch_bn.running_mean)
    torch.testing.assert_close(synced.running_var, torch_bn.running_var)  # unbiased over 50


def _check_per_device_is_ghost_batches(rank: int) -> None:
    x = torch.randn(8, 4, 3, generator=torch.Generator().manual_seed(6))
    grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(7))
    ghost = randomize_affine(BatchNorm(4, virtual_batch_size=4), 3)
    local = randomize_affine(BatchNorm(4), 3)
    whole = x.clone().requires_grad_()
    (ghost(whole) * grad_out).sum().backward()
    mine = x[4 * rank : 4 * rank + 4].clone().requires_grad_()
    y = local(mine)
    (y * grad_out[4 * rank : 4 * rank + 4]).sum().backward()
    torch.testing.assert_close(mine.grad, whole.grad[4 * rank : 4 * rank + 4])
    for param, ref in ((local.weight, ghost.weight), (local.bias, ghost.bias)):
        dist.all_reduce(param.grad)
        torch.testing.assert_close(param.grad, ref.grad)
    for name in ("running_mean", "running_var"):
        averaged = getattr(local, name).clone()
        dist.all_reduce(averaged)
        torch.testing.assert_close(averaged / 2, getattr(ghost, name))


def layer_worker(rank: int, store: str) -> None:
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    dist.init_process_group(
        "gloo",
        store=dist.FileStore(store, 2),
        rank=rank,
        world_size=2,
        timeout=timedelta(seconds=60),
    )
    try:
        _check_synced_layers(rank)
        _check_batch_against_torch(rank)
        _check_per_device_is_ghost_batches(rank)
    finally:
        dist.destroy_process_group()


def cuda_worker(rank: int, store: str) -> None:
    """``batch`` with synchronized statistics against ``torch.nn.SyncBatchNorm``: NCCL with a
    device per rank where there are two, else gloo with both ranks on the one device (NCCL
    refuses two ranks on one device)."""
    shared = torch.cuda.device_count() < 2
    device = torch.device("cuda", 0 if shared else rank)
    torch.cuda.set_device(device)
    dist.init_process_group(
        "gloo" if shared else "nccl",
        store=dist.FileStore(store, 2),
        rank=rank,
        world_size=2,
        timeout=timedelta(seconds=60),
    )
    try:
        x = torch.randn(12, 4, 5, generator=torch.Generator().manual_seed(3)).to(device)
        mine = x[6 * rank : 6 * rank + 6]
        ours = randomize_affine(BatchNorm(4), 2).to(device)
        ours.sync_statistics = True
        theirs = torch.nn.SyncBatchNorm.convert_sync_batchnorm(
            randomize_affine(torch.nn.BatchNorm1d(4), 2)
        ).to(device)
        a, b = mine.clone().requires_grad_(), mine.clone().requires_grad_()
        ya, yb = ours(a), theirs(b)
        ya.square().sum().backward()
        yb.square().sum().backward()
        torch.testing.assert_close(ya, yb, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ours.weight.grad, theirs.weight.grad, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ours.running_var, theirs.running_var, rtol=1e-4, atol=1e-6)
    finally:
        dist.destroy_process_group()
