"""What the seed question is measured by: train-mode vs eval-mode gaps, and divergence.

``train mode`` is the forward as trained (batch statistics for ``batch``, the moving averages
for ``moving_average``, r/d-corrected batch statistics for ``renorm``); ``eval mode`` uses the
population estimates. A gap between the two is the train/test mismatch that normalizing with
batch statistics creates; divergence is the blow-up that normalizing with moving averages is
said to cause.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from normlab.quantities import TRACED


def accuracy(logits: Tensor, labels: Tensor) -> float:
    return (logits.argmax(dim=1) == labels).float().mean().item()


def mean_kl(logits_p: Tensor, logits_q: Tensor) -> float:
    """Mean over examples of KL(p || q) between the softmax distributions, in nats."""
    log_p = F.log_softmax(logits_p.double(), dim=1)
    log_q = F.log_softmax(logits_q.double(), dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1).mean().item()


def gap_metrics(logits_train_mode: Tensor, logits_eval: Tensor, labels: Tensor) -> dict[str, float]:
    """Accuracy of both forwards on the same examples, their difference and their KL.

    ``gap_train_minus_eval > 0``: the batch-statistics forward classifies better than the
    population-statistics one; ``kl_train_eval`` is KL(train-mode || eval-mode).
    """
    acc_train_mode = accuracy(logits_train_mode, labels)
    acc_eval = accuracy(logits_eval, labels)
    return {
        "acc_train_mode": acc_train_mode,
        "acc_eval": acc_eval,
        "gap_train_minus_eval": acc_train_mode - acc_eval,
        "kl_train_eval": mean_kl(logits_train_mode, logits_eval),
    }


def total_norm(tensors: list[Tensor]) -> float:
    """Euclidean norm of all tensors together (one host sync)."""
    if not tensors:
        return 0.0
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(tensors))).item()


@dataclass(frozen=True)
class Divergence:
    step: int
    signal: str
    value: float

    def as_dict(self) -> dict[str, object]:
        return {
            "divergence_step": self.step,
            "divergence_signal": self.signal,
            "divergence_value": self.value,
        }


BLOW_UPS = ("nonfinite_loss", "loss_explosion", "nonfinite_params")
GROWTHS = ("param_norm_growth", "activation_growth")


@dataclass
class DivergenceDetector:
    """Decides that a run blew up, and from which step; records two growth signals.

    A run **diverged** when its loss blew up: a non-finite loss, a loss above ``loss_factor``
    times the first one, or non-finite parameters (the next loss would be non-finite). Growth of
    the parameter norm past ``param_norm_factor`` times its initial value, and pre-norm
    activations with RMS above ``activation_bound``, are recorded with the first step each was
    seen (:attr:`growth`) but never stop a run by themselves: under batch statistics the weights
    feeding a norm are scale-invariant, and their norm grows while the function does not change.
    """

    loss_factor: float = 10.0
    param_norm_factor: float = 100.0
    activation_bound: float = 1e4
    first_loss: float | None = None
    initial_param_norm: float | None = None
    growth: dict[str, int] = field(default_factory=dict)

    def check_losses(self, losses: list[float], first_step: int) -> Divergence | None:
        for offset, loss in enumerate(losses):
            if self.first_loss is None:
                self.first_loss = loss
            step = first_step + offset
            if not math.isfinite(loss):
                return Divergence(step, "nonfinite_loss", loss)
            if math.isfinite(self.first_loss) and loss > self.loss_factor * self.first_loss:
                return Divergence(step, "loss_explosion", loss)
        return None

    def check_params(self, param_norm: float, step: int) -> Divergence | None:
        if not math.isfinite(param_norm):
            return Divergence(step, "nonfinite_params", param_norm)
        if self.initial_param_norm is None:
            self.initial_param_norm = param_norm
        elif param_norm > self.param_norm_factor * self.initial_param_norm:
            self.growth.setdefault("param_norm_growth", step)
        return None

    def check_activations(self, prenorm_rms: float, step: int) -> None:
        if not prenorm_rms <= self.activation_bound:  # nan too
            self.growth.setdefault("activation_growth", step)

    def summary(self) -> dict[str, int | None]:
        return {f"{name}_step": self.growth.get(name) for name in GROWTHS}

    def state_dict(self) -> dict[str, object]:
        return {
            "first_loss": self.first_loss,
            "initial_param_norm": self.initial_param_norm,
            "growth": dict(self.growth),
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.first_loss = state["first_loss"]
        self.initial_param_norm = state["initial_param_norm"]
        self.growth = dict(state.get("growth", {}))


@dataclass
class Window:
    """Training loss and accuracy accumulated on the device between two logged rows.

    A step adds its loss to the sum and only keeps its logits and labels; the correct
    predictions of up to ``COUNT_EVERY`` steps are counted at once (an integer count, so the
    same whatever the grouping) when the window is read or the backlog fills: one device op a
    step instead of five, felt at batch size 1 (``scripts/bench_trainer.py``).

    A pack's window (:mod:`normlab.packed_trainer`) holds its seeds side by side: losses of
    shape ``(seeds,)``, logits ``(batch, seeds, classes)``, labels ``(batch, seeds)``; its
    sums are per seed, and :meth:`take` hands them to the seeds' own windows (:meth:`put`).
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
        self.examples += len(labels)
        self.steps += 1
        self.pending_losses.append(loss)
        if len(self.pending_predictions) >= self.COUNT_EVERY:
            self._count_correct()

    def _count_correct(self) -> None:
        if not self.pending_predictions:
            return
        logits, labels = zip(*self.pending_predictions, strict=True)
        correct = (torch.cat(logits).argmax(dim=-1) == torch.cat(labels)).sum(dim=0)
        if self.correct is None:
            self.correct = correct
        else:
            self.correct += correct
        self.pending_predictions = []

    def drain_losses(self) -> list[float]:
        """The losses of the steps since the last drain (a pack's: a list per seed)."""
        values = torch.stack(self.pending_losses, dim=-1).tolist() if self.pending_losses else []
        self.pending_losses = []
        return values

    def take(self) -> tuple[Tensor, Tensor, int, int]:
        """The loss sum, correct predictions, examples and steps so far; the window empties
        (its pending losses stay)."""
        self._count_correct()
        out = (self.loss_sum, self.correct, self.examples, self.steps)
        self.loss_sum, self.correct, self.examples, self.steps = None, None, 0, 0
        return out

    def put(self, loss_sum: Tensor, correct: Tensor, examples: int, steps: int) -> None:
        """Add what another window took over ``steps`` steps (one seed's share of a pack's)."""
        self._count_correct()
        self.loss_sum = loss_sum.clone() if self.loss_sum is None else self.loss_sum + loss_sum
        self.correct = correct.clone() if self.correct is None else self.correct + correct
        self.examples += examples
        self.steps += steps

    def collect(self) -> dict[str, float]:
        if not self.steps:
            return {}
        loss_sum, correct, examples, steps = self.take()
        return {"loss": loss_sum.item() / steps, "train_acc": correct.item() / examples}

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


class Trace:
    """Per-step values of a run's first ``steps`` steps and of its last ``steps`` (a ring),
    kept on the device: nothing is read back until :meth:`rows`, so a run that blows up
    between two logged rows still leaves its path into the blow-up (``trace.csv``)."""

    FIELDS = TRACED  # the columns of trace.csv, as the trainer stacks them

    def __init__(self, steps: int, device: torch.device) -> None:
        self.steps = steps
        self.first = torch.full((steps, len(self.FIELDS)), math.nan, device=device)
        self.last = torch.full((steps, len(self.FIELDS)), math.nan, device=device)
        self.recorded = 0

    def add(self, step: int, values: Tensor) -> None:
        if step < self.steps:
            self.first[step].copy_(values)
        self.last[step % self.steps].copy_(values)
        self.recorded = step + 1

    def rows(self) -> list[dict[str, float]]:
        """The recorded steps in order, each once."""
        first, last = self.first.tolist(), self.last.tolist()
        steps = dict.fromkeys(range(min(self.recorded, self.steps)))
        steps.update(dict.fromkeys(range(max(0, self.recorded - self.steps), self.recorded)))
        rows = []
        for step in steps:
            values = first[step] if step < self.steps else last[step % self.steps]
            rows.append({"step": step, **dict(zip(self.FIELDS, values, strict=True))})
        return rows

    def state_dict(self) -> dict[str, Any]:
        return {"first": self.first, "last": self.last, "recorded": self.recorded}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.first.copy_(state["first"])
        self.last.copy_(state["last"])
        self.recorded = int(state["recorded"])
