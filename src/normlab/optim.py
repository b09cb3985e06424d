"""The optimizer and its learning rate: the batch-size scaling rule, warm-up and decay."""

from __future__ import annotations

import math

import torch
from torch import nn

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
