"""The one training loop every normalization mode shares, and what it measures.

Per step: schedules set the learning rate and the norm layers' scheduled attributes (momentum,
rmax/dmax...) and, from the run's switch step on (``norm.switch_at``, :func:`switch_step`), the
layers' statistics to their population ones; one SGD/AdamW step runs on a batch drawn by the
sampler, and the loss and
accuracy are accumulated on the device. Every ``divergence.check_every`` steps the losses and the
parameter norm are read back and checked for a blow-up. Every ``eval_every`` steps (and at step
0 and at the end) a row of metrics is logged: training loss/accuracy, gradient and parameter
norms, the norm layers' diagnostics, and the evaluation (:mod:`normlab.evaluation`).

Where things live: the optimizer and its learning rate in :mod:`normlab.optim`, evaluation in
:mod:`normlab.evaluation`, divergence, the loss window and the per-step trace in
:mod:`normlab.metrics`, signals in :mod:`normlab.signals`, checkpoint files in
:mod:`normlab.checkpoint` (the state itself is :meth:`Trainer.state_dict`).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normlab.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from normlab.config.schema import RunConfig, config_node
from normlab.data import Dataset, make_sampler
from normlab.evaluation import Evaluator
from normlab.metrics import Divergence, DivergenceDetector, Trace, Window, total_norm
from normlab.models import prenorm_biases
from normlab.norms import norm_layers
from normlab.optim import build_optimizer, lr_factor, scaled_lr
from normlab.progress import RunProgress
from normlab.records import RunRecord
from normlab.schedules import Schedule, build_schedule, schedule_kwargs
from normlab.signals import SignalGuard

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


def switch_step(run: RunConfig, total: int) -> int | None:
    """The first step trained with population statistics (``round(switch_at * total)``; the
    total itself: none is), or None for a run that never switches."""
    at = run.norm.switch.switch_at
    return None if at is None else round(at * total)


def layer_schedules(
    run: RunConfig, layers: Iterable[nn.Module]
) -> dict[str, tuple[Schedule, list[nn.Module]]]:
    """Per scheduled attribute (``momentum``, ``rmax``...): its schedule, from the config node
    the layers' class names, and the layers that follow it."""
    out: dict[str, tuple[Schedule, list[nn.Module]]] = {}
    for layer in layers:
        for attribute, scheduled in type(layer).schedules.items():
            if attribute not in out:
                node = config_node(run, scheduled.node)
                out[attribute] = (build_schedule(**schedule_kwargs(node)), [])
            out[attribute][1].append(layer)
    return out


def prepare_norms(
    run: RunConfig, norms: Iterable[nn.Module]
) -> dict[str, tuple[Schedule, list[nn.Module]]]:
    """Set ``norms`` to track their running statistics unless the run freezes them at its
    switch; return their :func:`layer_schedules`."""
    norms = list(norms)
    for layer in norms:
        layer.track_running = not run.norm.switch.switch_freeze
    return layer_schedules(run, norms)


def autocast(run: RunConfig, device: torch.device) -> contextlib.AbstractContextManager:
    """bfloat16 autocast for ``precision=bfloat16``; norm layers keep float32 statistics."""
    if run.precision == "bfloat16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def apply_step_values(
    values: dict[str, float],
    optimizer: torch.optim.Optimizer,
    schedules: dict[str, tuple[Schedule, list[nn.Module]]],
    norms: Iterable[nn.Module],
) -> None:
    """A step's ``values``: its learning rate on ``optimizer``, the rest on the layers."""
    for group in optimizer.param_groups:
        group["lr"] = values["lr"]
    apply_layer_values(values, schedules, norms)


def apply_layer_values(
    values: dict[str, float],
    schedules: dict[str, tuple[Schedule, list[nn.Module]]],
    norms: Iterable[nn.Module],
) -> None:
    """Set the scheduled attributes of a step's ``values`` (:meth:`Trainer._schedule_values`)
    on the layers that follow them, and which statistics ``norms`` train with."""
    # written only where a layer holds another value: a write goes through
    # nn.Module.__setattr__ and the setter's check, ~2 us a layer (scripts/bench_trainer.py)
    for attribute, (_, layers) in schedules.items():
        value = values[attribute]
        for layer in layers:
            if getattr(layer, attribute) != value:
                setattr(layer, attribute, value)
    if "uses_population" in values:
        statistics = "population" if values["uses_population"] else "batch"
        for layer in norms:
            if layer.statistics != statistics:
                layer.statistics = statistics


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
        self.layers = [m for m in model.modules() if type(m) is run.norm.layer_class]
        self.norms = norm_layers(model)
        # the parameter lists, made once: walking the module tree per step costs us
        # (scripts/bench_trainer.py, batch size 1)
        self.params = list(model.parameters())
        self.biases = prenorm_biases(model)
        self.schedules = prepare_norms(run, self.norms.values())
        self.switch_step = switch_step(run, self.total)
        div = run.divergence
        self.detector = DivergenceDetector(
            div.loss_factor, div.param_norm_factor, div.activation_bound
        )
        self.window = Window()
        self.trace = Trace(run.trace.steps, device) if run.trace.steps else None
        self.evaluator = Evaluator(model, self.layers, self._eval_sets(), run.eval.eval_batch_size)
        self.values_per_channel = self._values_per_channel()
        self.step = 0
        self.evaluations = 0
        self.train_seconds = 0.0
        self.eval_seconds = 0.0
        self.best: dict[str, float] = {}
        self.last_row: dict[str, float] = {}
        self.divergence: Divergence | None = None
        self.stop_signal: str | None = None
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

    def _eval_sets(self) -> dict[str, tuple[Tensor, Tensor, list[Tensor]]]:
        """The held-out set and a fixed training subset, each with its train-mode batches (same
        batch size and sampler as training, from their own seeds: the training stream is
        untouched)."""
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

    @torch.no_grad()
    def _values_per_channel(self) -> dict[str, int]:
        """Per norm layer, the values each channel's batch statistics come from: examples
        behind a statistic times the spatial positions of the layer's input."""
        examples = self.run.norm.record(self.run.batch_size)["statistics_batch_size"]
        positions: dict[str, int] = {}
        names = {id(m): name for name, m in self.model.named_modules()}

        def probe(module: nn.Module, args: tuple[Tensor, ...]) -> None:
            x = args[0]
            positions[names[id(module)]] = x.numel() // (x.shape[0] * x.shape[1])

        handles = [layer.register_forward_pre_hook(probe) for layer in self.layers]
        was_training = self.model.training
        try:
            self.model.eval()
            self.model(self.data.x_train[:1])
        finally:
            self.model.train(was_training)
            for handle in handles:
                handle.remove()
        return {name: examples * count for name, count in positions.items()}

    # ------------------------------------------------------------------ loop

    def fit(self) -> dict[str, Any]:
        """Train to the end, a divergence or a stop signal; return the summary's numbers."""
        self.progress = RunProgress(
            self.total, self.record.run_dir.name, self.run.progress, initial=self.step
        )
        self.model.train()
        try:
            with SignalGuard(self) as signals:
                if self.first_row_due():
                    self._log_row()
                    signals.dispatch()
                while self.step < self.total and self.divergence is None and not self.stop_signal:
                    self._iteration()
                    signals.dispatch()
                if self.divergence is not None:
                    self.log_divergence_row()
                elif self.stop_signal:
                    self.save_checkpoint()
        finally:
            self.progress.close()
        return self.summary()

    def _iteration(self) -> None:
        """One step and whatever falls due after it; signals wait until it is over."""
        self._train_step()
        log_due, check_due = self.due(self.step)
        if check_due:
            self._check_divergence()
        if log_due and self.divergence is None:
            self.log_due_row()

    def first_row_due(self) -> bool:
        """The row of step 0 is logged before training, unless a resumed run has it."""
        return self.step == 0 and self.record.metrics.rows_written == 0

    def due(self, step: int) -> tuple[bool, bool]:
        """Whether a row, and whether a divergence check, falls due after ``step`` steps."""
        log_due = step % self.eval_every == 0 or step == self.total
        return log_due, log_due or step % self.run.divergence.check_every == 0

    def log_due_row(self) -> None:
        """A row that fell due, and the checkpoint that may follow it."""
        self._log_row()
        self._maybe_checkpoint()

    def log_divergence_row(self) -> None:
        """The row of the step the run diverged at, unless a due row has logged it."""
        if self.last_logged_step != self.step:
            self._log_row()

    def _train_step(self) -> None:
        started = time.perf_counter()
        self.lr = self._apply_schedules()
        x, y = self._batch()
        with autocast(self.run, self.device):
            logits = self.model(x)
            loss = self._loss(logits, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        loss = self._step_loss(loss.detach())
        if self.run.optim.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.params, self.run.optim.grad_clip)
        self.optimizer.step()
        self.window.add(loss, logits.detach(), y)
        if self.trace is not None:
            self.trace.add(self.step, self._trace_values(loss))
        self.step += 1
        self.train_seconds += time.perf_counter() - started

    def _batch(self) -> tuple[Tensor, Tensor]:
        index = self.sampler.next_indices()
        return self.data.x_train[index], self.data.y_train[index]

    def _loss(self, logits: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(logits.float(), y)

    def _step_loss(self, loss: Tensor) -> Tensor:
        """The step's loss once the gradients are complete (here, as computed)."""
        return loss

    def _apply_schedules(self) -> float:
        values = self._schedule_values(self.step)
        apply_step_values(values, self.optimizer, self.schedules, self.norms.values())
        return values["lr"]

    def _schedule_values(self, step: int) -> dict[str, float]:
        """The learning rate, each scheduled layer attribute and, for a run that switches,
        whether the layers used population statistics (1) or batch statistics (0), that
        ``step`` trained with."""
        values = {"lr": self.base_lr * lr_factor(step, self.total, self.run)}
        for attribute, (schedule, _) in self.schedules.items():
            values[attribute] = schedule(step, self.total)
        if self.switch_step is not None:
            values["uses_population"] = float(step >= self.switch_step)
        return values

    def _check_divergence(self) -> None:
        losses = self.window.drain_losses()
        self.detect_divergence(losses, total_norm([p.detach() for p in self.params]), self.step)
        if losses:
            self.progress.update(self.step, loss=losses[-1])

    def detect_divergence(self, losses: list[float], param_norm: float, step: int) -> None:
        """The divergence test after ``step`` steps, of the losses of the last steps (the
        ones since the previous test) and of the parameter norm."""
        first = step - len(losses)
        self.divergence = self.detector.check_losses(losses, first) or self.detector.check_params(
            param_norm, step
        )

    def _trace_values(self, loss: Tensor) -> Tensor:
        nan = loss.new_tensor(math.nan)
        biases = _norm([b.detach() for b in self.biases], nan)
        params = _norm([p.detach() for p in self.params], nan)
        return trace_values(loss, params, biases, self.norms.values())

    # ------------------------------------------------------------------ measurements

    def _log_row(self) -> None:
        started = time.perf_counter()
        row: dict[str, Any] = self._schedule_values(max(self.step - 1, 0))
        row.update(self.window.collect())
        row["grad_norm"] = total_norm([p.grad for p in self.params if p.grad is not None])
        row["param_norm"] = total_norm([p.detach() for p in self.params])
        if self.biases:
            row["prenorm_bias_norm"] = total_norm([b.detach() for b in self.biases])
        row.update(self._norm_diagnostics())
        row.update(self.evaluate())
        if "prenorm_rms_max" in row:
            self.detector.check_activations(row["prenorm_rms_max"], self.step)
        row["samples_seen"] = self.step * self.run.batch_size
        self.model.train()  # evaluation leaves eval mode behind; steps never switch modes
        self.last_logged_step = self.step
        self.eval_seconds += time.perf_counter() - started
        self.evaluations += 1
        self.record.log(row, self.step)
        self.last_row = row
        self._track_best(row)
        self.progress.update(self.step, val_acc=row.get("val_acc_eval", float("nan")))

    def _norm_diagnostics(self) -> dict[str, float]:
        per_layer = {name: layer.diagnostics.collect() for name, layer in self.norms.items()}
        per_layer = {name: stats for name, stats in per_layer.items() if stats}
        row: dict[str, float] = {}
        for name, stats in per_layer.items():
            row.update({f"layer/{name}/{k}": v for k, v in stats.items()})
        for key in dict.fromkeys(k for stats in per_layer.values() for k in stats):
            values = [s[key] for s in per_layer.values() if key in s]
            row[key] = sum(values) / len(values)
        if per_layer:
            row["prenorm_rms_max"] = max(s["prenorm_rms"] for s in per_layer.values())
        return row

    def evaluate(self) -> dict[str, float]:
        row = self.evaluator.evaluate()
        last = self.step >= self.total or self.divergence is not None
        if (
            self.run.eval.precise_bn
            and self.norms
            and (last or not self.run.eval.precise_last_only)
        ):
            row.update(
                self.evaluator.precise(self._precise_batches, self.data.x_val, self.data.y_val)
            )
        return row

    def _precise_batches(self) -> Iterator[Tensor]:
        x, y = self.data.x_train, self.data.y_train
        sampler = self._sampler(y, self.run.seed + 104729)
        examples = self.run.eval.precise_examples
        count = self.run.eval.precise_batches
        if examples is not None:
            count = math.ceil(examples / self.run.batch_size)
        return (x[sampler.next_indices()] for _ in range(count))

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
        seconds = self.train_seconds + self.eval_seconds
        return {
            "status": self.status(),
            "steps": self.step,
            "total_steps": self.total,
            "train_seconds": self.train_seconds,
            "eval_seconds": self.eval_seconds,
            "eval_fraction": self.eval_seconds / seconds if seconds else None,
            "samples_per_s": self.step * self.run.batch_size / self.train_seconds
            if self.train_seconds
            else None,
            "values_per_channel": self.values_per_channel,
            "values_per_channel_min": min(self.values_per_channel.values(), default=None),
            "final": final,
            "best": {f"best_{k}": v for k, v in self.best.items()},
            **({"switch_step": self.switch_step} if self.switch_step is not None else {}),
            **self.detector.summary(),
            **(self.divergence.as_dict() if self.divergence else {}),
            **({"stop_signal": self.stop_signal} if self.stop_signal else {}),
        }

    def trace_rows(self) -> list[dict[str, float]]:
        return self.trace.rows() if self.trace is not None else []

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
            "trace": self.trace.state_dict() if self.trace is not None else None,
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
        if self.trace is not None and state.get("trace") is not None:
            self.trace.load_state_dict(state["trace"])
        set_rng_state(state["rng"])
        self.train_seconds = state["timers"]["train_seconds"]
        self.eval_seconds = state["timers"]["eval_seconds"]
        self.best, self.last_row = dict(state["best"]), dict(state["last_row"])

    def resume_from(self, path: Path) -> int:
        self.load_state_dict(load_checkpoint(path, self.device))
        return self.step


def trace_values(
    loss: Tensor, param_norm: Tensor, bias_norm: Tensor | None, norms: Iterable[nn.Module]
) -> Tensor:
    """A step's row of ``trace.csv`` (:attr:`Trace.FIELDS`), as one device tensor (nothing
    is read back): the loss, the parameter and pre-norm bias norms (nan: no biases) and the
    layers' batch means (RMS over channels, mean over layers). ``loss`` may have a leading
    seed dimension (a pack's seeds, channel groups in ``norms``); the row gets it too."""
    nan = torch.full_like(loss, math.nan)
    means = (n.diagnostics.current_batch_mean() for n in norms)
    rms = [m.view(*loss.shape, -1).square().mean(dim=-1).sqrt() for m in means if m is not None]
    mean_rms = torch.stack(rms).mean(dim=0) if rms else nan
    biases = nan if bias_norm is None else bias_norm
    return torch.stack((loss.float(), param_norm, biases, mean_rms.to(loss.dtype)), dim=-1)


def _norm(tensors: list[Tensor], empty: Tensor) -> Tensor:
    if not tensors:
        return empty
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(tensors))).to(empty.dtype)
