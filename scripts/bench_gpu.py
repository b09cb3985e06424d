"""The GPU check, in one script of a few minutes: run it once on a machine with a CUDA device.

Not a test: a measurement. It prints, side by side, in one run:

1. ``bench_norm.py --device cuda`` and ``bench_trainer.py --device cuda`` (their own tables);
2. steps/s of the MNIST-1D MLP and cnn1d (normlab batch norm, diagnostics off) at batch sizes
   1, 8, 128: an eager training step against the whole step (forward, backward, SGD) captured
   in one CUDA graph and replayed (``torch.cuda.graph``), each step's batch copied into the
   graph's static input; the target is >= 3x eager at batch size 1;
3. a bfloat16 autocast run of every mode (``precision=bfloat16``; norm statistics stay float32)
   and the CUDA tests (running buffers' dtype and finiteness among them).

    python scripts/bench_gpu.py                 # everything, ~5 minutes on an H200
    python scripts/bench_gpu.py --only steps    # part 2 only (also runs on CPU, eager only)
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from bench_trainer import compose_run

from normlab.data import Dataset, load_dataset
from normlab.norms import norm_layers
from normlab.train import build_run_model, seed_everything

SCRIPTS = Path(__file__).parent
MODELS = ("mlp", "cnn1d")
BATCH_SIZES = (1, 8, 128)
MODES = ("batch", "moving_average", "renorm", "online", "group")
WIDTHS = {"mlp": 128, "cnn1d": 32}  # as the seed_question studies train them


def training_state(model_name: str, batch_size: int, data: Dataset, cache: str):
    config = compose_run(batch_size, 10, data.x_train.device.type, cache)
    config.model.name, config.model.width, config.model.depth = model_name, WIDTHS[model_name], 3
    seed_everything(0)
    model = build_run_model(config, data).to(data.x_train.device)
    for layer in norm_layers(model).values():
        layer.track_diagnostics = False  # Python-side bookkeeping has no place in a graph
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    batches = [
        torch.randint(len(data.y_train), (batch_size,), generator=generator).to(data.x_train.device)
        for _ in range(64)
    ]
    return model, optimizer, batches


def eager_steps(model, optimizer, data: Dataset, batches) -> Callable[[int], None]:
    def steps(n: int) -> None:
        for i in range(n):
            index = batches[i % len(batches)]
            loss = F.cross_entropy(model(data.x_train[index]), data.y_train[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return steps


def captured_steps(model, optimizer, data: Dataset, batches) -> Callable[[int], None]:
    """The whole training step in one CUDA graph (PyTorch's whole-network capture recipe)."""
    if not data.x_train.is_cuda:
        raise RuntimeError("capturing a CUDA graph needs a CUDA device")
    static_x = data.x_train[batches[0]].clone()
    static_y = data.y_train[batches[0]].clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):  # warm-up on a side stream, as the recipe asks
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(static_x), static_y).backward()
            optimizer.step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    optimizer.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        F.cross_entropy(model(static_x), static_y).backward()
        optimizer.step()

    def steps(n: int) -> None:
        for i in range(n):
            index = batches[i % len(batches)]
            torch.index_select(data.x_train, 0, index, out=static_x)
            torch.index_select(data.y_train, 0, index, out=static_y)
            graph.replay()

    return steps


def steps_per_second(steps: Callable[[int], None], device: torch.device, n: int = 200) -> float:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    steps(20)
    rates = []
    for _ in range(5):
        sync()
        start = time.perf_counter()
        steps(n)
        sync()
        rates.append(n / (time.perf_counter() - start))
    return statistics.median(rates)


def step_table(device: torch.device, cache: str) -> list[tuple]:
    data = load_dataset("mnist1d", cache_dir=cache, device=device)
    rows = []
    for model_name in MODELS:
        for batch_size in BATCH_SIZES:
            eager = steps_per_second(
                eager_steps(*_state(model_name, batch_size, data, cache)), device
            )
            try:
                captured = steps_per_second(
                    captured_steps(*_state(model_name, batch_size, data, cache)), device
                )
            except RuntimeError as error:
                captured, note = float("nan"), str(error).splitlines()[0]
            else:
                note = ""
            rows.append((model_name, batch_size, eager, captured, captured / eager, note))
    return rows


def _state(model_name: str, batch_size: int, data: Dataset, cache: str):
    model, optimizer, batches = training_state(model_name, batch_size, data, cache)
    return model, optimizer, data, batches


def print_steps(rows: list[tuple], device: torch.device) -> None:
    print(
        f"\nsteps/s, {device} ({_device_name(device)}), torch {torch.__version__}: eager vs "
        "the whole step captured in a CUDA graph (target >= 3x at batch size 1)"
    )
    print(f"{'model':>6} {'batch':>5} {'eager':>9} {'captured':>9} {'ratio':>6}")
    for model_name, batch_size, eager, captured, ratio, note in rows:
        print(
            f"{model_name:>6} {batch_size:>5} {eager:>9.0f} {captured:>9.0f} {ratio:>6.2f} {note}"
        )


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def _run(command: list[str]) -> None:
    print("\n$ " + " ".join(command), flush=True)
    subprocess.run(command, check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("benches", "steps", "bf16"), default=None)
    parser.add_argument("--cache", default=".cache/normlab")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    python = sys.executable
    if args.only in (None, "benches"):
        _run([python, str(SCRIPTS / "bench_norm.py"), "--device", device.type, "--reps", "100"])
        _run([python, str(SCRIPTS / "bench_trainer.py"), "--device", device.type, "--blocks", "20"])
    if args.only in (None, "steps"):
        print_steps(step_table(device, args.cache), device)
    if args.only in (None, "bf16"):
        _run(
            [
                python,
                "-m",
                "normlab.train",
                "-m",
                f"norm={','.join(MODES)}",
                "batch_size=1,128",
                f"device={device.type}",
                "precision=bfloat16",
                "steps=200",
                "eval_every=100",
                "sweep=gpu_bf16",
                "paths.results=/tmp/normlab-gpu",
                "progress=off",
            ]
        )
        _run([python, "-m", "pytest", "-q", "-k", "cuda", "tests"])


if __name__ == "__main__":
    main()
