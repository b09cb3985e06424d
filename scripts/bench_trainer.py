"""Training steps/s of the normlab harness against a bare PyTorch loop, same model and data.

Not a test: a measurement. For each batch size, two copies of the MNIST-1D ``cnn1d`` model with
batch norm are built from the same seed (``normlab.train.build_run_model``, so both hold the same
``normlab.norm.BatchNorm`` layers recording the same diagnostics), each with its own SGD
optimizer (lr, momentum 0.9, weight decay on conv/linear weights only, as the harness groups
them) and its own ``iid`` sampler with the run's seed. One copy is trained by a bare loop
(``bare_runner``: index, forward, cross-entropy, zero_grad, backward, step), the other by the
real ``Trainer._iteration`` (schedules, the step, the on-device
loss/accuracy window, the step timer, and the divergence check every ``divergence.check_every``
steps with its host sync). Blocks of ``--steps-per-block`` steps of each alternate, the order
swapped every block, so machine noise hits both alike; the table shows the median steps/s of
each and the median of the per-block ratios, after a warm-up.

    python scripts/bench_trainer.py                        # CPU, torch's default thread count
    python scripts/bench_trainer.py --threads 1 --blocks 60
    python scripts/bench_trainer.py --device cuda          # synchronizes at block boundaries
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from normlab.config.schema import RunConfig
from normlab.config.validation import validate
from normlab.data import Dataset, load_dataset, make_sampler
from normlab.progress import RunProgress
from normlab.records import RunRecord
from normlab.train import CONF_DIR, build_run_model, device_name, seed_everything
from normlab.trainer import Trainer

BATCH_SIZES = (1, 32)
TARGET = 0.95


@dataclass
class Runner:
    label: str
    steps: Callable[[int], None]  # run n training steps


def compose_run(batch_size: int, steps: int, device: str, cache: str, *overrides: str) -> RunConfig:
    """The default ``normlab-train`` config (norm=batch, model=cnn1d, data=mnist1d, optim=sgd)
    with ``overrides``, lasting ``steps`` steps with its only evaluation after the last one."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[
                f"batch_size={batch_size}",
                f"steps={steps}",
                f"eval_every={steps}",
                f"device={device}",
                f"paths.cache={cache}",
                "progress=off",
                "sweep=bench",
                *overrides,
            ],
        )
    GlobalHydra.instance().clear()
    return validate(cfg)


def bare_runner(config: RunConfig, data: Dataset) -> Runner:
    seed_everything(config.seed)
    model = build_run_model(config, data).to(data.x_train.device)
    model.train()
    params = list(model.parameters())
    optimizer = torch.optim.SGD(
        [
            {
                "params": [p for p in params if p.dim() > 1],
                "weight_decay": config.optim.weight_decay,
            },
            {"params": [p for p in params if p.dim() <= 1], "weight_decay": 0.0},
        ],
        lr=config.optim.lr,
        momentum=config.optim.momentum,
    )
    sampler = make_sampler("iid", data.y_train, config.batch_size, config.seed)
    x_train, y_train = data.x_train, data.y_train

    def steps(n: int) -> None:
        for _ in range(n):
            index = sampler.next_indices()
            x, y = x_train[index], y_train[index]
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return Runner("bare", steps)


def harness_runner(config: RunConfig, data: Dataset, record_dir: Path) -> Runner:
    seed_everything(config.seed)
    model = build_run_model(config, data).to(data.x_train.device)
    trainer = Trainer(config, data, model, RunRecord(record_dir), data.x_train.device)
    trainer.progress = RunProgress(trainer.total, "bench", "off")  # fit() is not used here

    def steps(n: int) -> None:
        for _ in range(n):
            trainer._iteration()
        if trainer.evaluations or trainer.divergence is not None:
            raise RuntimeError("the harness evaluated or diverged inside the timed region")

    return Runner("harness", steps)


def time_blocks(
    runners: tuple[Runner, Runner], blocks: int, warmup: int, per_block: int, device: str
) -> dict[str, list[float]]:
    """Seconds per block of each runner; the order within a block pair alternates."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    times: dict[str, list[float]] = {r.label: [] for r in runners}
    for block in range(warmup + blocks):
        for runner in runners if block % 2 == 0 else runners[::-1]:
            sync()
            start = time.perf_counter()
            runner.steps(per_block)
            sync()
            if block >= warmup:
                times[runner.label].append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--steps-per-block", type=int, default=50)
    parser.add_argument("--blocks", type=int, default=40, help="timed blocks per loop")
    parser.add_argument("--warmup", type=int, default=4, help="untimed blocks per loop")
    parser.add_argument("--cache", default=".cache/normlab", help="MNIST-1D cache directory")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    data = load_dataset("mnist1d", cache_dir=args.cache, device=args.device)
    # one step past the timed ones, so the run's final evaluation never falls inside them
    run_steps = (args.warmup + args.blocks) * args.steps_per_block + 1
    rows = []
    with tempfile.TemporaryDirectory() as tmp:  # the record is never opened: nothing is written
        for batch_size in BATCH_SIZES:
            config = compose_run(batch_size, run_steps, args.device, args.cache)
            runners = (bare_runner(config, data), harness_runner(config, data, Path(tmp)))
            times = time_blocks(
                runners, args.blocks, args.warmup, args.steps_per_block, args.device
            )
            bare = [args.steps_per_block / t for t in times["bare"]]
            harness = [args.steps_per_block / t for t in times["harness"]]
            ratio = statistics.median(h / b for h, b in zip(harness, bare, strict=True))
            rows.append((batch_size, statistics.median(bare), statistics.median(harness), ratio))

    print(
        f"device: {args.device} ({device_name(args.device)}), torch {torch.__version__}, "
        f"threads: {torch.get_num_threads()}"
    )
    print(
        f"{args.blocks} blocks x {args.steps_per_block} steps per loop after {args.warmup} "
        f"warm-up blocks; medians\n"
    )
    print(f"{'batch size':>10}  {'bare steps/s':>12}  {'harness steps/s':>15}  {'ratio':>6}")
    for batch_size, bare, harness, ratio in rows:
        flag = "" if ratio >= TARGET else f"  < {TARGET}"
        print(f"{batch_size:>10}  {bare:>12.1f}  {harness:>15.1f}  {ratio:>6.3f}{flag}")
    print(
        "\nratio: median over block pairs of harness/bare steps/s (order alternating), not the"
        "\nratio of the two medians. Both loops train their own copy of the same model (same"
        "\nseed, normlab BatchNorm with diagnostics on), with SGD at the same base lr, momentum"
        "\nand weight decay grouping, each drawing batches from its own iid sampler with the"
        "\nrun's seed (sampler.next_indices()). The harness column times Trainer._iteration():"
        "\nschedules (its lr follows the config's cosine decay), the step,"
        "\nthe on-device loss/accuracy window, the step timer and the divergence check every"
        "\ndivergence.check_every steps (loss read-back and parameter norm, a host sync)."
        "\nEvaluation is excluded by construction: steps and eval_every lie one step past the"
        "\nlast timed step, so _log_row never runs (checked after every block)."
    )


if __name__ == "__main__":
    main()
