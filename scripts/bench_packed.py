"""Training steps/s of one cell's seeds packed in one process against one process per seed.

Not a test: a measurement. For each model (the MNIST-1D ``mlp`` and ``cnn1d``, batch norm, the
default ``normlab-train`` config otherwise) and batch size, the same ``--seeds`` seeds train:

- **packed**: one process with ``--threads`` threads, all seeds in one packed model
  (:class:`normlab.packed_trainer.PackedTrainer`, its real ``_iteration``);
- **alone**: the seeds spread over ``--threads`` worker processes of one thread each (as
  ``make run``'s joblib sweep runs them: same total threads), each seed trained by the real
  ``Trainer._iteration`` after the other in its worker.

With ``--modes`` naming several modes (a setting's modes, which a sweep packs together), each
row compares instead, in one process of ``--threads`` threads each:

- **setting**: every mode's seeds in one pack;
- **by mode**: one pack per mode (its ``--seeds`` seeds), one after another: how a cell's
  seeds alone would pack.

Each process times only its training steps, after ``--warmup`` untimed ones (Python start,
imports and building the models are left out: they favour packing further). The table gives
seed-steps per second (every seed's steps over the wall time of the slowest worker) and their
ratio; steps and eval_every lie past the timed steps, so no evaluation falls inside them. Each
row runs ``--repeats`` packed/alone pairs one after the other and reports the medians (the
speedup: the median of the pairs' ratios, each pair's printed as it runs): a VM's speed drifts
by ±10 % from one minute to the next, more than a single pair can tell from a real change.

    python scripts/bench_packed.py                    # CPU, 5 seeds, 2 threads
    python scripts/bench_packed.py --device cuda --seeds 64 --threads 1
    python scripts/bench_packed.py --modes batch,moving_average,renorm,online,group --threads 1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_trainer import compose_run

from normlab.config.schema import RunConfig
from normlab.data import Dataset
from normlab.packed_trainer import PackedTrainer
from normlab.progress import RunProgress
from normlab.records import RunRecord
from normlab.train import build_run_model, device_name, load_run_data, seed_everything
from normlab.trainer import Trainer

MODELS = ("mlp", "cnn1d")
BATCH_SIZES = (1, 4, 16, 128)
TARGET = 3.0  # at batch sizes <= 16
# the models of the seed_question studies: the MLP (3 x 128), cnn1d as registered (3 x 32), the
# 2-D CNN of seed_question_mnist_cnn (width 16)
STUDY_SHAPES = {"mlp": ("model.depth=3", "model.width=128"), "cnn": ("model.width=16",)}


def seed_configs(
    model: str, batch_size: int, steps: int, seeds: list[int], mode: str, args
) -> list[RunConfig]:
    """The run of each of ``seeds`` in one cell: composed once (Hydra's compose is slow enough
    to matter at 64 seeds), then given each seed."""
    shape = STUDY_SHAPES.get(model, ())
    groups = ["norm.groups=8"] if mode == "group" else []
    studied = []
    if "," in args.modes:
        # the studies' learning rates; the divergence checks run but never stop a seed for its
        # loss or weights (moving_average blows up at batch 1, and a seed that stopped would
        # leave the pack and shorten the steps timed)
        studied = [
            "optim.lr=0.05",
            "optim.lr_scaling=linear",
            "divergence.loss_factor=1e30",
            "divergence.param_norm_factor=1e30",
        ]
    overrides = (f"data={args.data}", f"model={model}", *shape, f"norm={mode}", *groups, *studied)
    config = compose_run(batch_size, steps, args.device, args.cache, *overrides)
    return [dataclasses.replace(config, seed=seed) for seed in seeds]


def trainer_for(config: RunConfig, data: Dataset, record_dir: Path) -> Trainer:
    seed_everything(config.seed)
    model = build_run_model(config, data).to(data.x_train.device)
    record = RunRecord(record_dir / f"{config.norm.mode}-{config.seed}")
    trainer = Trainer(config, data, model, record, data.x_train.device)
    trainer.progress = RunProgress(trainer.total, "bench", "off")  # fit() is not used here
    return trainer


def timed(iteration, warmup: int, steps: int, device: str) -> float:
    for _ in range(warmup):
        iteration()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        iteration()
    sync()
    return time.perf_counter() - start


def worker(args) -> None:
    """One process's share: its seeds (of every mode) in one pack, in one pack per mode, or one
    after another; prints its seconds."""
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.worker_seeds.split(",")]
    run_steps = args.warmup + args.steps + 1
    configs = [
        seed_configs(args.model, args.batch, run_steps, seeds, mode, args)
        for mode in args.modes.split(",")
    ]
    data = load_run_data(configs[0][0], torch.device(args.device))
    with tempfile.TemporaryDirectory() as tmp:  # records are never opened: nothing is written
        by_mode = [[trainer_for(c, data, Path(tmp)) for c in mode] for mode in configs]
        trainers = [t for mode in by_mode for t in mode]
        if args.worker == "alone":
            packs = [[t] for t in trainers]
        else:
            packs = by_mode if args.worker == "bymode" else [trainers]
        seconds = sum(timed(_iteration(p), args.warmup, args.steps, args.device) for p in packs)
        if any(t.evaluations for t in trainers):
            raise RuntimeError("an evaluation fell inside the timed steps")
    print(json.dumps({"seconds": seconds}))


def _iteration(trainers: list[Trainer]):
    """The training iteration of ``trainers``: the real unpacked one for one seed."""
    if len(trainers) == 1:
        return trainers[0]._iteration
    packed = PackedTrainer(trainers, lambda i, s: None)
    packed.progress = RunProgress(packed.total, "bench", "off")
    return packed._iteration


def run_workers(args, model: str, batch: int, shares: list[tuple[str, list[int], int]]) -> float:
    """Start one process per share (kind, seeds, threads) at once; the slowest one's seconds."""
    processes = []
    for kind, seeds, threads in shares:
        command = [
            sys.executable, __file__, "--worker", kind, "--model", model, "--batch", str(batch),
            "--worker-seeds", ",".join(map(str, seeds)), "--threads", str(threads),
            "--steps", str(args.steps), "--warmup", str(args.warmup),
            "--device", args.device, "--cache", args.cache, "--modes", args.modes,
            "--data", args.data,
        ]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        processes.append(subprocess.Popen(command, stdout=subprocess.PIPE, env=env, text=True))
    seconds = []
    for process in processes:
        out, _ = process.communicate()
        if process.returncode:
            raise SystemExit(f"a worker failed ({process.returncode})")
        seconds.append(json.loads(out.strip().splitlines()[-1])["seconds"])
    return max(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="total threads of either side")
    parser.add_argument("--steps", type=int, default=200, help="timed steps per seed")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument(
        "--repeats", type=int, default=3, help="packed/alone pairs per row, alternating"
    )
    parser.add_argument("--batch-sizes", default=",".join(map(str, BATCH_SIZES)))
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--cache", default=".cache/normlab", help="MNIST-1D cache directory")
    parser.add_argument(
        "--data", default="mnist1d", help="mnist_5k (with --models mlp,cnn) reads $NORMLAB_DATA"
    )
    parser.add_argument(
        "--modes", default="batch", help="several: one pack of them all against one per mode"
    )
    parser.add_argument("--worker", choices=("packed", "alone", "bymode"), help=argparse.SUPPRESS)
    parser.add_argument("--worker-seeds", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    seeds = list(range(args.seeds))
    modes = args.modes.split(",")
    workers = max(1, min(args.threads, args.seeds))
    if len(modes) > 1:  # the setting's one pack against one pack per mode, one process each
        workers, other = 1, "by mode"
        shares = [("bymode", seeds, args.threads)]
    else:
        other = "alone"
        shares = [("alone", seeds[w::workers], args.threads // workers) for w in range(workers)]
    rows = []
    for model in args.models.split(","):
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            pairs = [  # alternating, so a drift in the machine's speed meets both sides
                (
                    run_workers(args, model, batch, [("packed", seeds, args.threads)]),
                    run_workers(args, model, batch, shares),
                )
                for _ in range(args.repeats)
            ]
            packed = statistics.median(p for p, _ in pairs)
            alone = statistics.median(a for _, a in pairs)
            speedup = statistics.median(a / p for p, a in pairs)
            total = len(modes) * args.seeds * args.steps
            rows.append((model, batch, total / alone, total / packed, speedup))
            spread = ", ".join(f"{a / p:.2f}" for p, a in pairs)
            print(f"{model} at batch {batch}: {speedup:.2f}x ({spread})", file=sys.stderr)

    print(
        f"device: {args.device} ({device_name(args.device)}), torch {torch.__version__}, "
        f"{args.seeds} seeds of {args.modes} on {args.data}, {args.threads} threads on either "
        f"side, {os.cpu_count()} cores"
    )
    print(f"{args.steps} timed steps per seed after {args.warmup} warm-up steps\n")
    packed_label = "packed" if len(modes) == 1 else "setting packed"
    print(f"{'model':>6}  {'batch':>5}  {other + ' seed-steps/s':>20}  "
          f"{packed_label + ' seed-steps/s':>27}  {'speedup':>7}")  # fmt: skip
    for model, batch, alone, packed, speedup in rows:
        flag = "" if len(modes) > 1 or batch > 16 or speedup >= TARGET else f"  < {TARGET}"
        print(f"{model:>6}  {batch:>5}  {alone:>20.1f}  {packed:>27.1f}  {speedup:>6.2f}x{flag}")
    if len(modes) > 1:
        print(
            f"\nby mode: one pack of {args.seeds} seeds per mode, one after another; setting "
            f"packed: all {len(modes) * args.seeds} seeds in one pack. Both one process of "
            f"{args.threads} thread(s),\nthe real PackedTrainer._iteration. Medians of "
            f"{args.repeats} alternating pairs per row."
        )
        return
    print(
        f"\nalone: the seeds over {workers} worker processes of {args.threads // workers} "
        f"thread(s), one seed after another in each (as a joblib sweep runs them); packed: one"
        f"\nprocess of {args.threads} thread(s). seed-steps/s: every seed's timed steps over the "
        "wall time of the slowest process. Both run the real loops (Trainer._iteration,"
        "\nPackedTrainer._iteration: schedules, step, window, divergence checks), "
        f"norm={modes[0]}. Medians of {args.repeats} alternating packed/alone pairs per row."
    )
    at_four = [speedup for _, batch, _, _, speedup in rows if batch == 4]
    if at_four:
        print(f"packed speedup at batch 4: {min(at_four):.2f}x")


if __name__ == "__main__":
    main()
