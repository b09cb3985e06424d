"""The one training loop every normalization mode shares, and what it measures.

Per step: schedules set the learning rate and the norm layers' momentum (and rmax/dmax), one
SGD/AdamW step runs on a batch drawn by the sampler, and the loss and accuracy are accumulated
on the device. Every ``divergence.check_every`` steps the losses and the parameter norm are
read back and checked for a blow-up. Every ``eval_every`` steps (and at step 0 and at the end)
a row of metrics is logged: training loss/accuracy, gradient and parameter norms, eval-mode vs
train-mode accuracy on validation and on a training subset, the norm layers' diagnostics, and
optionally the accuracy with precisely recomputed population statistics.
"""

from __future__ import annotations

import math
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normlab.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from normlab.config import RunConfig, config_node, schedule_kwargs
from normlab.data import Dataset, make_sampler
from normlab.loggers import RunRecord
from normlab.metrics import Divergence, DivergenceDetector, gap_metrics, total_norm
from normlab.norms import norm_layers
from normlab.precise_bn import recompute_population_stats
from normlab.schedules import build_schedule

STATUSES = ("running", "completed", "diverged", "interrupted", "failed")


def total_steps(run: RunConfig, train_examples: int) -> int:
    if run.steps is not None:
        return run.steps
    per_epoch = (
        train_examples // run.batch_size
        if run.data.drop_last
        else math.ceil(train_examples / run.batch_size)
    )
    return max(1, math.ceil(run.epochs * max(1, per_epoch)))


def eval_interval(run: RunConfig, total: int) -> int:
    """``eval_every`` steps, or ``total / num_evals`` when the run asks for a number of rows
    (so runs of very different lengths, as in a batch-size sweep, log alike)."""
    if run.num_evals is None:
        return run.eval_every
    return max(1, total // run.num_evals)


def scaled_lr(run: RunConfig) -> float:
    """The base learning rate after the batch-size scaling rule.

    ``linear`` (Goyal et al. 2017): ``lr * batch_size / base_batch_size``; ``sqrt``:
    ``lr * sqrt(batch_size / base_batch_size)``; ``none``: ``lr`` as given.
    """
    ratio = run.batch_size / run.optim.base_batch_size
    factor = {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[run.optim.lr_scaling]
    return run.optim.lr * factor


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


def build_optimizer(model: nn.Module, run: RunConfig) -> torch.optim.Optimizer:
    """Weight decay on conv/linear weights only; norm affine parameters and biases are exempt."""
    decay = [p for p in model.parameters() if p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.dim() <= 1]
    groups = [
        {"params": decay, "weight_decay": run.optim.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    lr = scaled_lr(run)
    if run.optim.name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(run.optim.momentum, 0.999))
    return torch.optim.SGD(groups, lr=lr, momentum=run.optim.momentum, nesterov=run.optim.nesterov)


@dataclass
class Window:
    """Training loss and accuracy accumulated on the device between two logged rows.

    A step adds its loss to the sum and only keeps its logits and labels; the correct
    predictions of up to ``COUNT_EVERY`` steps are counted at once (an integer count, so the
    same whatever the grouping) when the window is read or the backlog fills. That keeps the
    per-step cost at one device op instead of five, which is felt at batch size 1.
    """

    COUNT_EVERY: ClassVar[int] = 64

    loss_sum: Tensor | None = None
    correct: Tensor | None = None
    examples: int = 0
    steps: int = 0
    pending_losses: list[Tensor] = field(default_factory=list)
    pending_predictions: list[tuple[Tensor, Tensor]] = field(default_factory=list)

    def add(self, loss: Tensor, logits: Tensor, labels: Tensor) -> None:
        if self.loss_sum is None:
            self.loss_sum = loss.clone()
        else:
            self.loss_sum += loss
        self.pending_predictions.append((logits, labels))
        self.examples += labels.numel()
        self.steps += 1
        self.pending_losses.append(loss)
        if len(self.pending_predictions) >= self.COUNT_EVERY:
            self._count_correct()

    def _count_correct(self) -> None:
        if not self.pending_predictions:
            return
        logits, labels = zip(*self.pending_predictions, strict=True)
        correct = (torch.cat(logits).argmax(dim=1) == torch.cat(labels)).sum()
        if self.correct is None:
            self.correct = correct
        else:
            self.correct += correct
        self.pending_predictions = []

    def drain_losses(self) -> list[float]:
        values = torch.stack(self.pending_losses).tolist() if self.pending_losses else []
        self.pending_losses = []
        return values

    def collect(self) -> dict[str, float]:
        if not self.steps:
            return {}
        self._count_correct()
        out = {
            "loss": self.loss_sum.item() / self.steps,
            "train_acc": self.correct.item() / self.examples,
        }
        self.loss_sum, self.correct, self.examples, self.steps = None, None, 0, 0
        return out

    def state_dict(self) -> dict[str, Any]:
        self._count_correct()
        return {
            "loss_sum": self.loss_sum,
            "correct": self.correct,
            "examples": self.examples,
            "steps": self.steps,
            "pending_losses": list(self.pending_losses),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loss_sum, self.correct = state["loss_sum"], state["correct"]
        self.examples, self.steps = state["examples"], state["steps"]
        self.pending_losses = list(state["pending_losses"])
        self.pending_predictions = []


class Progress:
    """A one-line progress display on a terminal; silent when output goes to a file or CI."""

    def __init__(self, total: int, mode: str) -> None:
        self.total = total
        self.enabled = mode == "on" or (mode == "auto" and sys.stderr.isatty())
        self.last_draw = 0.0
        self.fields: dict[str, float] = {}

    def update(self, step: int, force: bool = False, **fields: float) -> None:
        self.fields.update(fields)
        now = time.monotonic()
        if not self.enabled or (not force and now - self.last_draw < 0.5):
            return
        self.last_draw = now
        shown = "  ".join(f"{k} {v:.4g}" for k, v in self.fields.items())
        sys.stderr.write(f"\rstep {step}/{self.total}  {shown}\033[K")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def layer_schedules(run: RunConfig, layers) -> dict[str, tuple[Any, list[nn.Module]]]:
    """Per scheduled attribute (``momentum``, ``rmax``...): its schedule, from the config node
    the layers' class names, and the layers that follow it."""
    out: dict[str, tuple[Any, list[nn.Module]]] = {}
    for layer in layers:
        for attribute, scheduled in type(layer).schedules.items():
            if attribute not in out:
                node = config_node(run, scheduled.node)
                out[attribute] = (build_schedule(**schedule_kwargs(node)), [])
            out[attribute][1].append(layer)
    return out


class Trainer:
    def __init__(
        self,
        run: RunConfig,
        data: Dataset,
        model: nn.Module,
        record: RunRecord,
        device: torch.device,
        checkpoint_path: Path | None = None,
    ) -> None:
        self.run, self.data, self.model, self.record = run, data, model, record
        self.device = device
        self.checkpoint_path = checkpoint_path
        self.total = total_steps(run, len(data.y_train))
        self.eval_every = eval_interval(run, self.total)
        self.sampler = self._sampler(data.y_train, run.seed)
        self.optimizer = build_optimizer(model, run)
        self.base_lr = scaled_lr(run)
        self.norms = norm_layers(model)
        self.params = list(model.parameters())  # walking the module tree per step costs us
        self.schedules = layer_schedules(run, self.norms.values())
        div = run.divergence
        self.detector = DivergenceDetector(
            div.loss_factor, div.param_norm_factor, div.activation_bound
        )
        self.window = Window()
        self.step = 0
        self.evaluations = 0
        self.train_seconds = 0.0
        self.eval_seconds = 0.0
        self.best: dict[str, float] = {}
        self.last_row: dict[str, float] = {}
        self.divergence: Divergence | None = None
        self.stop_signal: str | None = None
        self._eval_sets = self._build_eval_sets()
        self.last_logged_step: int | None = None

    # ------------------------------------------------------------------ setup

    def _sampler(self, labels: Tensor, seed: int):
        data = self.run.data
        return make_sampler(
            data.sampler,
            labels,
            self.run.batch_size,
            seed,
            drop_last=data.drop_last,
            classes_per_batch=data.classes_per_batch,
        )

    def _build_eval_sets(self) -> dict[str, tuple[Tensor, Tensor, list[Tensor]]]:
        """Validation and a fixed training subset, each with its train-mode batches (same batch
        size and sampler as training, from their own seeds so the training stream is untouched)."""
        data, seed = self.data, self.run.seed
        subset = min(self.run.eval.train_subset, len(data.y_train))
        sets = {
            "val": (data.x_val, data.y_val),
            "train_subset": (data.x_train[:subset], data.y_train[:subset]),
        }
        out = {}
        for offset, (name, (x, y)) in enumerate(sets.items(), start=1):
            batches = (
                self._sampler(y, seed + 7919 * offset).epoch_batches()
                if len(y) >= self.run.batch_size
                else []
            )
            out[name] = (x, y, batches)
        return out

    # ------------------------------------------------------------------ loop

    def fit(self) -> dict[str, Any]:
        """Train to the end, a divergence or a stop signal; return the summary's numbers."""
        self.progress = Progress(self.total, self.run.progress)
        started = time.perf_counter()
        self.model.train()
        with _SignalGuard(self) as signals:
            if self.step == 0 and self.record.metrics.rows_written == 0:
                self._log_row()
                signals.dispatch()
            while self.step < self.total and self.divergence is None and not self.stop_signal:
                self._iteration()
                signals.dispatch()
            if self.divergence is not None and self.last_logged_step != self.step:
                self._log_row()
            elif self.stop_signal:
                self.save_checkpoint()
        self.progress.close()
        self.wall_seconds = time.perf_counter() - started
        return self.summary()

    def _iteration(self) -> None:
        """One step and whatever falls due after it; signals wait until it is over."""
        self._train_step()
        log_due = self._due(self.eval_every) or self.step == self.total
        if log_due or self._due(self.run.divergence.check_every):
            self._check_divergence()
        if log_due and self.divergence is None:
            self._log_row()
            self._maybe_checkpoint()

    def _due(self, every: int) -> bool:
        return self.step % every == 0

    def _apply_schedules(self) -> float:
        values = self._schedule_values(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = values["lr"]
        # written only where a layer holds another value: a write goes through
        # nn.Module.__setattr__ and the setter's check (~2 us a layer)
        for attribute, (_, layers) in self.schedules.items():
            value = values[attribute]
            for layer in layers:
                if getattr(layer, attribute) != value:
                    setattr(layer, attribute, value)
        return values["lr"]

    def _train_step(self) -> None:
        started = time.perf_counter()
        self.lr = self._apply_schedules()
        index = self.sampler.next_indices()
        x, y = self.data.x_train[index], self.data.y_train[index]
        logits = self.model(x)
        loss = F.cross_entropy(logits, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.run.optim.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.params, self.run.optim.grad_clip)
        self.optimizer.step()
        self.window.add(loss.detach(), logits.detach(), y)
        self.step += 1
        self.train_seconds += time.perf_counter() - started

    def _check_divergence(self) -> None:
        first = self.step - len(self.window.pending_losses)
        losses = self.window.drain_losses()
        self.divergence = self.detector.check_losses(losses, first) or self.detector.check_params(
            total_norm([p.detach() for p in self.params]), self.step
        )
        if losses:
            self.progress.update(self.step, loss=losses[-1])

    # ------------------------------------------------------------------ measurements

    def _log_row(self) -> None:
        started = time.perf_counter()
        row: dict[str, Any] = self._schedule_values(max(self.step - 1, 0))
        row.update(self.window.collect())
        row["grad_norm"] = total_norm([p.grad for p in self.params if p.grad is not None])
        row["param_norm"] = total_norm([p.detach() for p in self.params])
        row.update(self._norm_diagnostics())
        row.update(self.evaluate())
        if self.divergence is None and "prenorm_rms_max" in row:
            self.divergence = self.detector.check_activations(row["prenorm_rms_max"], self.step)
        row["samples_seen"] = self.step * self.run.batch_size
        self.model.train()  # evaluation leaves eval mode behind; steps never switch modes
        self.last_logged_step = self.step
        self.eval_seconds += time.perf_counter() - started
        self.evaluations += 1
        self.record.log(row, self.step)
        self.last_row = row
        self._track_best(row)
        self.progress.update(self.step, force=True, val_acc=row.get("val_acc_eval", float("nan")))

    def _schedule_values(self, step: int) -> dict[str, float]:
        """The learning rate, and each scheduled layer attribute, that ``step`` trained with."""
        values = {"lr": self.base_lr * lr_factor(step, self.total, self.run)}
        for attribute, (schedule, _) in self.schedules.items():
            values[attribute] = schedule(step, self.total)
        return values

    def _norm_diagnostics(self) -> dict[str, float]:
        per_layer = {name: layer.diagnostics.collect() for name, layer in self.norms.items()}
        per_layer = {name: stats for name, stats in per_layer.items() if stats}
        row: dict[str, float] = {}
        for name, stats in per_layer.items():
            row.update({f"layer/{name}/{k}": v for k, v in stats.items()})
        for key in (
            "mean_shift",
            "std_ratio",
            "r_clip_frac",
            "d_clip_frac",
            "prenorm_mean",
            "prenorm_rms",
        ):
            values = [s[key] for s in per_layer.values() if key in s]
            if values:
                row[key] = sum(values) / len(values)
        if per_layer:
            row["prenorm_rms_max"] = max(s["prenorm_rms"] for s in per_layer.values())
        return row

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        row: dict[str, float] = {}
        for name, (x, y, batches) in self._eval_sets.items():
            logits_eval = self._eval_logits(x)
            row[f"{name}_acc_eval"] = (logits_eval.argmax(1) == y).float().mean().item()
            row[f"{name}_loss"] = F.cross_entropy(logits_eval, y).item()
            if batches:
                index, logits_train = self._train_mode_logits(x, batches)
                pair = gap_metrics(logits_train, logits_eval[index], y[index])
                row[f"{name}_acc_train_mode"] = pair["acc_train_mode"]
                row[f"{name}_gap_train_minus_eval"] = pair["gap_train_minus_eval"]
                row[f"{name}_kl_train_eval"] = pair["kl_train_eval"]
        row["gap_train_minus_eval"] = row.pop("val_gap_train_minus_eval", float("nan"))
        row["kl_train_eval"] = row.pop("val_kl_train_eval", float("nan"))
        row["train_minus_val_acc_eval"] = row["train_subset_acc_eval"] - row["val_acc_eval"]
        if self.run.eval.precise_bn and self.norms:
            row.update(self._precise_eval())
        return row

    def _eval_logits(self, x: Tensor) -> Tensor:
        self.model.eval()
        size = self.run.eval.eval_batch_size
        return torch.cat([self.model(x[i : i + size]) for i in range(0, len(x), size)])

    def _train_mode_logits(self, x: Tensor, batches: list[Tensor]) -> tuple[Tensor, Tensor]:
        """The forward as trained, batch by batch, with every buffer restored afterwards."""
        with _preserved_norm_state(self.model, self.norms):
            self.model.train()
            logits = torch.cat([self.model(x[b]) for b in batches])
        return torch.cat(batches), logits

    def _precise_eval(self) -> dict[str, float]:
        started = time.perf_counter()
        x, y = self.data.x_train, self.data.y_train
        sampler = self._sampler(y, self.run.seed + 104729)
        batches = (x[sampler.next_indices()] for _ in range(self.run.eval.precise_batches))
        with _preserved_norm_state(self.model, self.norms):
            recompute_population_stats(self.model, batches)
            logits = self._eval_logits(self.data.x_val)
        return {
            "val_acc_precise": (logits.argmax(1) == self.data.y_val).float().mean().item(),
            "val_loss_precise": F.cross_entropy(logits, self.data.y_val).item(),
            "precise_seconds": time.perf_counter() - started,
        }

    def _track_best(self, row: dict[str, float]) -> None:
        for key, better in (("val_acc_eval", max), ("val_loss", min), ("val_acc_train_mode", max)):
            value = row.get(key)
            if value is not None and math.isfinite(value):
                self.best[key] = better(self.best.get(key, value), value)

    # ------------------------------------------------------------------ summary and checkpoints

    def status(self) -> str:
        if self.divergence is not None:
            return "diverged"
        if self.stop_signal:
            return "interrupted"
        return "completed" if self.step >= self.total else "running"

    def summary(self) -> dict[str, Any]:
        final = {k: v for k, v in self.last_row.items() if not k.startswith("layer/")}
        return {
            "status": self.status(),
            "steps": self.step,
            "total_steps": self.total,
            "train_seconds": self.train_seconds,
            "eval_seconds": self.eval_seconds,
            "samples_per_s": self.step * self.run.batch_size / self.train_seconds
            if self.train_seconds
            else None,
            "final": final,
            "best": {f"best_{k}": v for k, v in self.best.items()},
            **(self.divergence.as_dict() if self.divergence else {}),
            **({"stop_signal": self.stop_signal} if self.stop_signal else {}),
        }

    def _maybe_checkpoint(self) -> None:
        every = self.run.checkpoint.every
        if (
            self.checkpoint_path
            and every
            and self.evaluations % every == 0
            and self.step < self.total
        ):
            self.save_checkpoint()

    def save_checkpoint(self) -> None:
        if self.checkpoint_path is None:
            return
        save_checkpoint(self.checkpoint_path, self.state_dict())

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "evaluations": self.evaluations,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "sampler": self.sampler.state_dict(),
            "window": self.window.state_dict(),
            "diagnostics": {n: layer.diagnostics.state_dict() for n, layer in self.norms.items()},
            "detector": self.detector.state_dict(),
            "rng": rng_state(),
            "timers": {"train_seconds": self.train_seconds, "eval_seconds": self.eval_seconds},
            "best": dict(self.best),
            "last_row": dict(self.last_row),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.evaluations = state["step"], state["evaluations"]
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.sampler.load_state_dict(state["sampler"])
        self.window.load_state_dict(state["window"])
        for name, layer in self.norms.items():
            layer.diagnostics.load_state_dict(state["diagnostics"][name])
        self.detector.load_state_dict(state["detector"])
        set_rng_state(state["rng"])
        self.train_seconds = state["timers"]["train_seconds"]
        self.eval_seconds = state["timers"]["eval_seconds"]
        self.best, self.last_row = dict(state["best"]), dict(state["last_row"])

    def resume_from(self, path: Path) -> int:
        self.load_state_dict(load_checkpoint(path, self.device))
        return self.step


class _preserved_norm_state:
    """Snapshot every buffer and the diagnostics switches; restore them on exit."""

    def __init__(self, model: nn.Module, norms: dict[str, nn.Module]) -> None:
        self.model, self.norms = model, norms

    def __enter__(self) -> None:
        self.buffers = {name: b.clone() for name, b in self.model.named_buffers()}
        self.tracking = {name: layer.track_diagnostics for name, layer in self.norms.items()}
        self.was_training = self.model.training
        for layer in self.norms.values():
            layer.track_diagnostics = False

    def __exit__(self, *exc: object) -> None:
        with torch.no_grad():
            for name, buffer in self.model.named_buffers():
                buffer.copy_(self.buffers[name])
        for name, layer in self.norms.items():
            layer.track_diagnostics = self.tracking[name]
        self.model.train(self.was_training)


class _SignalGuard:
    """Signals act only between two iterations, where the trainer's state is consistent.

    Python runs a signal handler between any two bytecodes of the main thread, in the middle of
    an optimizer step as readily as anywhere, so the handlers here only record the signal; the
    loop calls :meth:`dispatch` between iterations. SIGTERM and SIGINT then end the run
    gracefully (checkpoint, status ``interrupted``). SIGUSR2 is submitit's preemption/time-out
    signal: the handler installed before (submitit's: it calls the launcher's checkpoint hook,
    then requeues and exits) runs at the boundary; with none installed, it stops the run like
    SIGTERM.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.previous: dict[int, Callable | int | None] = {}
        self.pending: list[int] = []

    def __enter__(self) -> _SignalGuard:
        global _ACTIVE_TRAINER
        _ACTIVE_TRAINER = self.trainer
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self.previous[sig] = signal.signal(sig, self._record)
        return self

    def _record(self, signum: int, frame: object) -> None:
        self.pending.append(signum)

    def dispatch(self) -> None:
        while self.pending:
            signum = self.pending.pop(0)
            previous = self.previous.get(signum)
            if signum == signal.SIGUSR2 and callable(previous):
                previous(signum, None)
            else:
                self.trainer.stop_signal = signal.Signals(signum).name

    def __exit__(self, *exc: object) -> None:
        global _ACTIVE_TRAINER
        _ACTIVE_TRAINER = None
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


_ACTIVE_TRAINER: Trainer | None = None


def checkpoint_active_trainer() -> bool:
    """Save a checkpoint of the run training in this process, if any (preemption hook).

    Signals are dispatched between iterations (:class:`_SignalGuard`), so when this runs from
    submitit's handler the trainer is between two steps and its state is consistent.
    """
    if _ACTIVE_TRAINER is None:
        return False
    _ACTIVE_TRAINER.stop_signal = "preempted"
    _ACTIVE_TRAINER.save_checkpoint()
    return True
