"""Forward+backward time of every normlab norm mode relative to native torch batch norm.

Not a test: a measurement. For each input shape, every candidate (native ``nn.BatchNorm*d`` and
one layer per mode) runs one training-mode forward+backward per repetition, round-robin in a
fresh random order each repetition, so machine noise hits all candidates alike; the table shows
the median over repetitions, relative to native, after a warm-up.

    python scripts/bench_norm.py                      # CPU, torch's default thread count
    python scripts/bench_norm.py --threads 2 --reps 300
    python scripts/bench_norm.py --device cuda        # synchronizes around every timing
    python scripts/bench_norm.py --diagnostics off    # layers skip their per-step diagnostics

On CPU, batch, moving_average, renorm and online run their compiled training step
(normlab.norms.kernels); the "[pytorch path]" rows time the same layers with
``compiled_step = False``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from normlab.norms import MODES, build_norm, registry
from normlab.norms.options import option_names

SHAPES = ((32, 64, 16, 16), (128, 256), (1, 256))
# (row label, mode, build_norm options, layer attributes); variants of a mode get their own row
EXTRA_ROWS = (
    ("moving_average grad_through_batch", "moving_average", {"grad_through_batch": True}, {}),
    ("batch [pytorch path]", "batch", {}, {"compiled_step": False}),
    ("moving_average [pytorch path]", "moving_average", {}, {"compiled_step": False}),
    ("renorm [pytorch path]", "renorm", {}, {"compiled_step": False}),
    ("online [pytorch path]", "online", {}, {"compiled_step": False}),
)


@dataclass
class Candidate:
    label: str
    step: Callable[[], None]  # one forward+backward
    reset: Callable[[], None]  # drop accumulated grads, outside the timed region


def make_candidate(label: str, layer: nn.Module, x: Tensor, grad: Tensor) -> Candidate:
    x = x.detach().clone().requires_grad_(True)

    def step() -> None:
        layer(x).backward(grad)

    def reset() -> None:
        x.grad = None
        layer.zero_grad(set_to_none=True)

    return Candidate(label, step, reset)


def native_layer(shape: tuple[int, ...], device: str) -> nn.Module:
    cls = nn.BatchNorm2d if len(shape) == 4 else nn.BatchNorm1d
    return cls(shape[1]).to(device)


def native_trains_on(shape: tuple[int, ...], device: str) -> bool:
    """Native batch norm refuses one value per channel in training mode."""
    try:
        native_layer(shape, device)(torch.randn(shape, device=device))
    except ValueError:
        return False
    return True


def candidates_for(
    shape: tuple[int, ...], device: str, diagnostics: bool
) -> tuple[list[Candidate], bool]:
    g = torch.Generator(device="cpu").manual_seed(0)
    x = (torch.randn(shape, generator=g) * 2 + 1).to(device)
    grad = torch.randn(shape, generator=g).to(device)
    native = native_layer(shape, device)
    native_trains = native_trains_on(shape, device)
    if not native_trains:
        native.eval()  # the reference for this shape: native eval-mode forward+backward
    out = [make_candidate("native", native, x, grad)]
    rows = [(mode, mode, {}, {}) for mode in MODES] + list(EXTRA_ROWS)
    for label, mode, options, attributes in rows:
        if "groups" in option_names(registry.get(mode).options):
            options = {"groups": min(32, shape[1]), **options}
        layer = build_norm(mode, shape[1], **options).to(device)
        if hasattr(layer, "track_diagnostics"):
            layer.track_diagnostics = diagnostics
        for name, value in attributes.items():
            setattr(layer, name, value)
        out.append(make_candidate(label, layer, x, grad))
    return out, native_trains


def time_round_robin(
    candidates: list[Candidate], reps: int, warmup: int, device: str, seed: int
) -> dict[str, list[float]]:
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    times: dict[str, list[float]] = {c.label: [] for c in candidates}
    order = list(candidates)
    rng = random.Random(seed)
    for rep in range(warmup + reps):
        rng.shuffle(order)
        for c in order:
            c.reset()
            sync()
            start = time.perf_counter()
            c.step()
            sync()
            elapsed = time.perf_counter() - start
            if rep >= warmup:
                times[c.label].append(elapsed)
    return times


def drop_failing(candidates: list[Candidate]) -> tuple[list[Candidate], dict[str, str]]:
    """Run each candidate once; those that raise are reported, not timed."""
    kept, failed = [], {}
    for c in candidates:
        try:
            c.reset()
            c.step()
        except Exception as error:  # a benchmark reports every candidate it cannot time
            failed[c.label] = f"{type(error).__name__}: {error}"
        else:
            kept.append(c)
    return kept, failed


def paired_ratio(times: list[float], reference: list[float]) -> float:
    """Median of per-repetition ratios: slow drifts of the machine cancel within a repetition."""
    return statistics.median(t / r for t, r in zip(times, reference, strict=True))


def shape_name(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--diagnostics", choices=("on", "off"), default="on")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    native_us: dict[tuple[int, ...], float] = {}
    ratios: dict[tuple[int, ...], dict[str, float]] = {}
    native_trains: dict[tuple[int, ...], bool] = {}
    failures: dict[tuple[int, ...], dict[str, str]] = {}
    for shape in SHAPES:
        cands, native_trains[shape] = candidates_for(shape, args.device, args.diagnostics == "on")
        cands, failures[shape] = drop_failing(cands)
        times = time_round_robin(cands, args.reps, args.warmup, args.device, args.seed)
        native = times.pop("native")
        native_us[shape] = statistics.median(native) * 1e6
        ratios[shape] = {label: paired_ratio(ts, native) for label, ts in times.items()}

    print_table(args, native_us, ratios, native_trains, failures)


def print_table(args, native_us, ratios, native_trains, failures) -> None:
    labels = list(dict.fromkeys(label for s in SHAPES for label in [*ratios[s], *failures[s]]))
    width = max(len(label) for label in labels) + 2
    col = 20
    print(
        f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}, "
        f"diagnostics {args.diagnostics}, median of {args.reps} reps after {args.warmup} warm-up"
    )
    print(
        "forward+backward time relative to native batch norm, median over repetitions of the "
        "ratio within each repetition (lower is faster)\n"
    )
    print("mode".ljust(width) + "".join(shape_name(s).rjust(col) for s in SHAPES))
    native_cells = []
    for shape in SHAPES:
        mark = "" if native_trains[shape] else " [eval]*"
        native_cells.append(f"{native_us[shape]:.0f} us{mark}".rjust(col))
    print("native (abs)".ljust(width) + "".join(native_cells))
    for label in labels:
        cells = [
            (f"{ratios[s][label]:.2f}x" if label in ratios[s] else "error").rjust(col)
            for s in SHAPES
        ]
        print(label.ljust(width) + "".join(cells))
    for shape in SHAPES:
        for label, message in failures[shape].items():
            print(f"\nerror: {label} on {shape_name(shape)}: {message}")
        if not native_trains[shape]:
            print(
                f"\n* native nn.BatchNorm1d raises ValueError in training mode on "
                f"{shape_name(shape)} (one value per channel); the reference there is native "
                "eval-mode forward+backward (running statistics, no batch statistics)."
            )


if __name__ == "__main__":
    main()
