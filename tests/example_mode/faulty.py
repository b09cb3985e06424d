"""A batch norm that fails on rank 1 of a data-parallel run once it has trained ``at_step``
steps: it raises, or the process is killed (SIGKILL, as the kernel's OOM killer would)."""

from __future__ import annotations

import os
import signal

import torch.distributed as dist

from normlab.norms.batch import BatchNorm


class FaultyBatchNorm(BatchNorm):
    def __init__(self, num_features: int, fault: str = "raise", at_step: int = 2) -> None:
        super().__init__(num_features)
        self.fault, self.at_step = fault, at_step

    def train_forward(self, x):
        if (
            dist.is_initialized()
            and dist.get_rank() == 1
            and self.num_batches_tracked >= self.at_step
        ):
            if self.fault == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError("rank 1 failed on purpose")
        return super().train_forward(x)
