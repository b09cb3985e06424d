"""The seeds of one setting trained side by side in one packed model (:mod:`normlab.packing`).

Each seed keeps its own :class:`~normlab.trainer.Trainer` (model, sampler, record, detector,
evaluator, checkpoint): the packed trainer only replaces the training step. Per step every seed
draws its batch from its own sampler, the batches go in as the seeds' channel groups, and the
loss is the sum over seeds of each seed's mean cross-entropy, so each seed's gradient is the one
its unpacked run computes; clipping is per seed, and a seed's learning rate differs from the
first's by a constant factor (a study's selection stage): under SGD its gradient is scaled by the
factor before the step, under AdamW its slice of the step after it (both steps are linear in the
learning rate). Whenever a row, a divergence check or a checkpoint falls due, each seed's slice
is copied into its own model and optimizer and its own trainer logs, evaluates and checkpoints
exactly as unpacked. A seed that diverges stops alone: its row and record are written at that
step, and the seeds still running are packed again without it (a narrower model), so nothing
moves it and its slice costs no later step.

Seeds of different norms (a setting's modes) pack too: the pack orders its seeds by norm, each
norm's seeds one group of the packed model (:class:`~normlab.packing.SplitNorm`), and each
group's layers follow their own runs' schedules and switch.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normlab.data import SamplerStack
from normlab.metrics import Window
from normlab.norms import norm_layers
from normlab.optim import build_optimizer, fused_sgd_step
from normlab.packing import (
    ConvolutionBackend,
    NormGroup,
    Pack,
    PackedDiagnostics,
    Slot,
    pack_model,
)
from normlab.progress import RunProgress
from normlab.schedules import Schedule
from normlab.signals import SignalGuard
from normlab.trainer import (
    Trainer,
    apply_layer_values,
    apply_step_values,
    autocast,
    prepare_norms,
    trace_values,
)

Finished = Callable[[int, dict[str, Any]], None]


class _Quiet:
    """A seed's progress while the pack draws one bar for all of them."""

    def update(self, step: int, **fields: float) -> None:
        pass

    def close(self) -> None:
        pass


class PackedTrainer:
    """Trains ``trainers`` (one per seed, all at the same step) as one packed model; calls
    ``finished(index, summary)`` as each seed's run ends."""

    def __init__(self, trainers: Sequence[Trainer], finished: Finished) -> None:
        steps = {t.step for t in trainers}
        if len(steps) != 1:
            raise ValueError(f"packed seeds must start at one step, got {sorted(steps)}")
        self.trainers, self.finished = list(trainers), finished
        first = self.trainers[0]
        self.data, self.device = first.data, first.device
        self.step, self.total = first.step, first.total
        # the running seeds in pack order: the seeds of each norm side by side
        norms = [t.run.norm for t in self.trainers]
        self.members = sorted(range(len(norms)), key=lambda i: norms.index(norms[i]))
        for t in self.trainers:
            t.progress = _Quiet()
        self._pack()
        self.stop_signal: str | None = None

    def _pack(self) -> None:
        """The running seeds' models, optimizer states and pending losses into one packed
        model, seed ``s`` of the pack being ``self.trainers[self.members[s]]``."""
        trainers = [self.trainers[i] for i in self.members]
        first = trainers[0]
        self.run, self.seeds = first.run, len(trainers)
        models = [t.model for t in trainers]
        places = _norm_places(trainers)
        groups = [NormGroup(trainers[p.start].run.norm.build, len(p)) for p in places]
        self.model = pack_model(models, groups).to(self.device)
        self.pack = Pack(self.model, models)
        for seed in range(self.seeds):
            self.pack.load_seed(seed)
        self.optimizer = build_optimizer(self.model, self.run, fused=True)
        self.batches = SamplerStack([t.sampler for t in trainers])
        self.convolutions = ConvolutionBackend(self.model, self.run.batch_size, self.device)
        self.pack.load_optimizer(self.optimizer, [t.optimizer for t in trainers])
        self.params = list(self.model.parameters())
        self.slots = list(self.pack.param_slots.values())
        names = {id(p): n for n, p in first.model.named_parameters()}
        self.biases = [self.pack.params[names[id(b)]] for b in first.biases]
        self.bias_slots = [self.pack.param_slots[names[id(b)]] for b in first.biases]
        self.norms = norm_layers(self.model)
        self.groups = [_Group.of(p, trainers[p.start], self.norms, self.pack) for p in places]
        ratios = [t.base_lr / first.base_lr for t in trainers]
        self.lr_ratios = (
            None if all(r == 1.0 for r in ratios) else torch.tensor(ratios, device=self.device)
        )
        # each parameter's seeds' factors, a column to scale its seeds' rows
        self.ratio_rows = (
            None if self.lr_ratios is None else [_rows(self.lr_ratios, s) for s in self.slots]
        )
        self.scaled_sgd = self.lr_ratios is not None and isinstance(self.optimizer, torch.optim.SGD)
        if self.scaled_sgd:
            self._scale_gradients_instead()
        # the seeds' losses and predictions side by side, until a seed's own window needs them
        self.window = Window(
            pending_losses=[
                torch.stack(column)
                for column in zip(*(t.window.pending_losses for t in trainers), strict=True)
            ]
        )
        for t in trainers:
            t.window.pending_losses = []
        # each running seed's share of the packed steps' time, credited to it when it syncs
        self.seed_seconds = 0.0
        self.credited = dict.fromkeys(self.members, 0.0)
        self.model.train()

    # ------------------------------------------------------------------ loop

    def fit(self) -> None:
        first = self.trainers[0]
        label = f"{first.record.run_dir.name} (+{len(self.trainers) - 1} runs)"
        self.progress = RunProgress(self.total, label, self.run.progress, initial=self.step)
        try:
            with SignalGuard(self) as signals:
                for index, trainer in self._running():
                    if trainer.first_row_due():
                        self._sync(index)
                        trainer._log_row()
                signals.dispatch()
                while self.step < self.total and self.members and not self.stop_signal:
                    self._iteration()
                    signals.dispatch()
                if self.stop_signal:
                    self.save_checkpoint()
        except BaseException:
            self._sync_after_failure()
            raise
        finally:
            self.progress.close()
        for index, trainer in self._running():
            trainer.stop_signal = self.stop_signal
            self._finish(index)

    def _sync_after_failure(self) -> None:
        """What each running seed had done when the pack failed, into its own trainer, for
        its failed record (as far as the pack's state can still be read)."""
        for index, _ in self._running():
            with contextlib.suppress(Exception):
                self._sync(index)

    def _running(self) -> list[tuple[int, Trainer]]:
        """The running seeds: (place in the pack, trainer)."""
        return [(s, self.trainers[i]) for s, i in enumerate(self.members)]

    def _iteration(self) -> None:
        self._train_step()
        log_due, check_due = self.trainers[self.members[0]].due(self.step)
        if check_due:
            self._check_divergence()
        if log_due:
            for index, trainer in self._running():
                self._sync(index)
                trainer.log_due_row()

    def _train_step(self) -> None:
        started = time.perf_counter()
        first = self.trainers[self.members[0]]
        values = first._schedule_values(self.step)
        apply_step_values(values, self.optimizer, self.groups[0].schedules, self.groups[0].norms)
        for group in self.groups[1:]:  # other norms, their own runs' schedules and switch
            own = group.trainer._schedule_values(self.step)
            apply_layer_values(own, group.schedules, group.norms)
        index = self.batches.next_indices()
        x, y = self._inputs(index), self.data.y_train[index]
        with self.convolutions:
            with autocast(self.run, self.device):
                logits = self.model(x).view(*y.shape, -1)
                losses = F.cross_entropy(logits.float().permute(0, 2, 1), y, reduction="none")
                losses = losses.mean(dim=0)
            for param in self.params:  # zero_grad(set_to_none=True) without its wrappers' cost
                param.grad = None
            losses.sum().backward()
        if self.run.optim.grad_clip is not None:
            self._clip_per_seed(self.run.optim.grad_clip)
        self._optimizer_step()
        self.window.add(losses.detach(), logits.detach(), y)
        if first.trace is not None:
            self._trace(losses.detach())
        self.step += 1
        self.seed_seconds += (time.perf_counter() - started) / self.seeds

    def _inputs(self, index: Tensor) -> Tensor:
        """Seed ``s``'s batch (column ``s`` of ``index``) as channel group ``s``:
        ``(B, S * C, ...)``, gathered in that order."""
        x = self.data.x_train[index.view(-1)]
        return x.view(index.shape[0], -1, *x.shape[2:])

    def _clip_per_seed(self, max_norm: float) -> None:
        """``clip_grad_norm_`` applied to each seed's gradients on their own."""
        held = [
            (p.grad, s) for p, s in zip(self.params, self.slots, strict=True) if p.grad is not None
        ]
        grads, slots = [g for g, _ in held], [s for _, s in held]
        coef = (max_norm / (self.pack.per_seed_norms(grads, slots) + 1e-6)).clamp_(max=1.0)
        for grad, slot in held:
            grad.view(slot.seeds, -1).mul_(_rows(coef, slot))

    def _scale_gradients_instead(self) -> None:
        """An SGD step is linear in its gradient, weight decay included: seed ``s`` steps at
        ``r_s`` times the first seed's rate if the packed optimizer (its weight decay taken
        out) gets ``r_s * (grad + decay * param)``, and its momentum buffer then holds ``r_s``
        times the seed's own (undone in :meth:`_sync`). Exact for the powers of two a study's
        factors are; the other way round (stepping, then rescaling each update) costs three
        more ops per tensor and a copy of the parameters every step."""
        groups = self.optimizer.param_groups
        decays = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
        self.decays = [decays[id(p)] for p in self.params]
        for group in groups:
            group["weight_decay"] = 0.0
        with torch.no_grad():
            for param, rows in zip(self.params, self.ratio_rows, strict=True):
                buffer = self.optimizer.state.get(param, {}).get("momentum_buffer")
                if buffer is not None:
                    buffer.view(len(rows), -1).mul_(rows)

    def _optimizer_step(self) -> None:
        if self.lr_ratios is None:
            _sgd_or_own_step(self.optimizer)
            return
        if self.scaled_sgd:
            self._scaled_sgd_step()
            return
        with torch.no_grad():
            before = [p.detach().clone() for p in self.params]
        self.optimizer.step()
        with torch.no_grad():
            for param, rows, old in zip(self.params, self.ratio_rows, before, strict=True):
                param.sub_(old).view(len(rows), -1).mul_(rows)
                param.add_(old)

    @torch.no_grad()
    def _scaled_sgd_step(self) -> None:
        grads = [p.grad for p in self.params]
        for param, grad, rows, decay in zip(
            self.params, grads, self.ratio_rows, self.decays, strict=True
        ):
            if grad is None:
                continue
            scaled = torch.add(grad, param, alpha=decay) if decay else grad.clone()
            scaled.view(len(rows), -1).mul_(rows)
            param.grad = scaled
        _sgd_or_own_step(self.optimizer)
        for param, grad in zip(self.params, grads, strict=True):
            param.grad = grad  # the seeds' rows report their own gradients

    # ------------------------------------------------------------------ per-seed measurements

    def _flush_window(self) -> None:
        """The steps since the last flush into every running seed's own window."""
        if self.window.steps:
            loss_sum, correct, examples, steps = self.window.take()
            for index, trainer in self._running():
                trainer.window.put(loss_sum[index], correct[index], examples, steps)
        for index, trainer in self._running():
            trainer.window.pending_losses = [losses[index] for losses in self.window.pending_losses]

    def _trace(self, losses: Tensor) -> None:
        params = self.pack.per_seed_norms(self.params, self.slots)
        biases = self.pack.per_seed_norms(self.biases, self.bias_slots) if self.biases else None
        values = torch.cat(  # per group: its seeds' rows, from its own layers' batch means
            [
                trace_values(
                    losses[g.places],
                    params[g.places],
                    None if biases is None else biases[g.places],
                    g.norms,
                )
                for g in self.groups
            ]
        )
        for index, trainer in self._running():
            trainer.trace.add(self.step, values[index])

    def _check_divergence(self) -> None:
        losses = self.window.drain_losses()  # a list per seed
        norms = self.pack.per_seed_norms(self.params, self.slots).tolist()
        diverged = []
        for index, trainer in self._running():
            trainer.detect_divergence(losses[index] if losses else [], norms[index], self.step)
            if trainer.divergence is not None:
                self._sync(index)
                trainer.log_divergence_row()
                self._finish(index)
                diverged.append(index)
        if losses:
            self.progress.update(self.step, loss=losses[0][-1])
        if diverged:
            self._without(diverged)

    def _without(self, stopped: list[int]) -> None:
        """Pack the running seeds again without the ``stopped`` ones (places in the pack)."""
        for index, _ in self._running():
            if index not in stopped:
                self._sync(index)
        self.members = [i for s, i in enumerate(self.members) if s not in stopped]
        if self.members:
            self._pack()

    def _sync(self, index: int) -> None:
        """Seed ``index``'s slice and everything measured since into its own trainer."""
        member = self.members[index]
        trainer = self.trainers[member]
        trainer.train_seconds += self.seed_seconds - self.credited[member]
        self.credited[member] = self.seed_seconds
        self.pack.store_seed(index)
        self.pack.store_optimizer(self.optimizer, index, trainer.optimizer)
        ratio = 1.0 if self.lr_ratios is None else float(self.lr_ratios[index])
        if self.scaled_sgd:
            for state in trainer.optimizer.state.values():
                if state.get("momentum_buffer") is not None:
                    state["momentum_buffer"].div_(ratio)
        for group in trainer.optimizer.param_groups:
            group["lr"] = self.optimizer.param_groups[0]["lr"] * ratio
        for layer in self.norms.values():
            if isinstance(layer.diagnostics, PackedDiagnostics):
                layer.diagnostics._fold()
        self._flush_window()
        trainer.step = self.step
        if self.step:  # the layer attributes the last step trained with (train-mode evaluation)
            values = trainer._schedule_values(self.step - 1)
            apply_layer_values(values, trainer.schedules, trainer.norms.values())

    def _finish(self, index: int) -> None:
        """The run of the seed at place ``index`` is over: its summary goes to ``finished``."""
        self._sync(index)
        member = self.members[index]
        summary = {**self.trainers[member].summary(), "packed_runs": len(self.trainers)}
        self.finished(member, summary)

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self) -> None:
        """Every running seed's own checkpoint, as its unpacked run writes it."""
        for index, trainer in self._running():
            self._sync(index)
            trainer.save_checkpoint()


def _norm_places(trainers: Sequence[Trainer]) -> list[range]:
    """The places in the pack of each stretch of consecutive ``trainers`` of one norm."""
    places: list[range] = []
    for place, trainer in enumerate(trainers):
        if places and trainer.run.norm == trainers[places[-1].start].run.norm:
            places[-1] = range(places[-1].start, place + 1)
        else:
            places.append(range(place, place + 1))
    return places


@dataclass(frozen=True)
class _Group:
    """The seeds of one norm in a pack: their places, the first one's trainer (its run's
    schedules and switch are theirs), and their packed norm layers and schedules."""

    places: slice
    trainer: Trainer
    norms: list[nn.Module]
    schedules: dict[str, tuple[Schedule, list[nn.Module]]]

    @classmethod
    def of(cls, seeds: range, trainer: Trainer, norms: dict[str, nn.Module], pack: Pack) -> _Group:
        own = [layer for name, layer in norms.items() if pack.slot(name).first == seeds.start]
        places = slice(seeds.start, seeds.stop)
        return cls(places, trainer, own, prepare_norms(trainer.run, own))


def _sgd_or_own_step(optimizer: torch.optim.Optimizer) -> None:
    """The packed optimizer's step: the fused SGD kernel without its wrapper where it applies."""
    if not fused_sgd_step(optimizer):
        optimizer.step()


def _rows(per_seed: Tensor, slot: Slot) -> Tensor:
    """``per_seed`` values of the seeds ``slot`` holds, a column to scale its seeds' rows."""
    return per_seed[slot.first : slot.first + slot.seeds].unsqueeze(1)
