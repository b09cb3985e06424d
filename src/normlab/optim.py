"""The optimizer and its learning rate: the batch-size scaling rule, warm-up and decay."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.sgd import sgd

from normlab.config.schema import RunConfig


def scaled_lr(run: RunConfig) -> float:
    """The base learning rate after the batch-size scaling rule.

    ``linear`` (Goyal et al. 2017): ``lr * batch_size / base_batch_size``; ``sqrt``:
    ``lr * sqrt(batch_size / base_batch_size)``; ``none``: ``lr`` as given. Times
    ``optim.lr_factor``, the factor a study chooses on a validation split.
    """
    ratio = run.batch_size / run.optim.base_batch_size
    factor = {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[run.optim.lr_scaling]
    return run.optim.lr * factor * run.optim.lr_factor


def lr_factor(step: int, total: int, run: RunConfig) -> float:
    """Linear warm-up over ``optim.warmup`` of the run, then constant, cosine or step decay."""
    optim = run.optim
    warmup = round(optim.warmup * total)
    if step < warmup:
        return (step + 1) / warmup
    if optim.schedule == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * progress))
    if optim.schedule == "step":
        return optim.gamma ** sum(step >= round(m * total) for m in optim.milestones)
    return 1.0


def build_optimizer(model: nn.Module, run: RunConfig, fused: bool = False) -> torch.optim.Optimizer:
    """Weight decay on conv/linear weights only; norm affine parameters and biases are exempt.
    ``fused``: torch's one-kernel step (a packed model's few large tensors,
    :mod:`normlab.packed_trainer`), the same update to float rounding."""
    decay = [p for p in model.parameters() if p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.dim() <= 1]
    groups = [
        {"params": decay, "weight_decay": run.optim.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    lr = scaled_lr(run)
    if run.optim.name == "adamw":
        return torch.optim.AdamW(
            groups, lr=lr, betas=(run.optim.momentum, 0.999), fused=fused or None
        )
    return torch.optim.SGD(
        groups,
        lr=lr,
        momentum=run.optim.momentum,
        nesterov=run.optim.nesterov,
        fused=fused or None,
    )


@torch.no_grad()
def fused_sgd_step(optimizer: torch.optim.Optimizer) -> bool:
    """``optimizer.step()`` of a fused ``torch.optim.SGD`` through torch's functional
    ``torch.optim.sgd.sgd``: the same kernel and numbers, without about 40 us of the optimizer's
    own Python a step (6-10 % of a packed step of five small seeds, :mod:`normlab.packed_trainer`;
    unpacked runs keep torch's step; the optimizer's step hooks do not run). Returns False,
    having done nothing, where it does not apply: not a fused SGD, a parameter without a
    gradient, or no momentum buffers yet (the first step, which makes them)."""
    if type(optimizer) is not torch.optim.SGD or not optimizer.defaults["fused"]:
        return False
    steps = []
    for group in optimizer.param_groups:
        params = group["params"]
        grads = [p.grad for p in params]
        if any(g is None for g in grads):
            return False
        buffers = [None] * len(params)
        if group["momentum"]:
            # "is None", not "None in": a tensor's == costs microseconds
            buffers = [optimizer.state[p].get("momentum_buffer") for p in params]
            if any(b is None for b in buffers):
                return False
        steps.append((group, params, grads, buffers))
    for group, params, grads, buffers in steps:
        sgd(
            params,
            grads,
            buffers,
            fused=True,
            weight_decay=group["weight_decay"],
            momentum=group["momentum"],
            lr=group["lr"],
            dampening=group["dampening"],
            nesterov=group["nesterov"],
            maximize=group["maximize"],
        )
    return True
