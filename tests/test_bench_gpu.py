"""The GPU check's code paths, where a CPU can run them: the eager step trains, and capturing
a CUDA graph says it needs CUDA; on a CUDA machine the captured step equals the eager one."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import bench_gpu
from conftest import CACHE

from normlab.data import load_dataset


def _state(device: str, model: str = "mlp"):
    data = load_dataset("mnist1d", cache_dir=CACHE, device=device, train_size=256, val_size=64)
    model_, optimizer, batches = bench_gpu.training_state(model, 4, data, str(CACHE))
    return model_, optimizer, data, batches


def test_the_eager_step_trains_on_cpu():
    model, optimizer, data, batches = _state("cpu")
    before = [p.detach().clone() for p in model.parameters()]
    bench_gpu.eager_steps(model, optimizer, data, batches)(3)
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))


def test_capturing_needs_cuda_and_says_so():
    with pytest.raises(RuntimeError, match="needs a CUDA device"):
        bench_gpu.captured_steps(*_state("cpu"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("model", ["mlp", "cnn1d"])
def test_the_captured_step_trains_as_the_eager_one(model):
    eager_model, eager_optimizer, data, batches = _state("cuda", model)
    captured = _state("cuda", model)
    # the capture warms up 3 steps on the first batch, then each replay takes the next batch
    order = [batches[0]] * 3 + batches[:5]
    bench_gpu.eager_steps(eager_model, eager_optimizer, data, order)(len(order))
    bench_gpu.captured_steps(*captured)(5)
    eager = (eager_model,)
    for a, b in zip(eager[0].parameters(), captured[0].parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
