"""What the seed question is measured by: train-mode vs eval-mode gaps, and divergence.

``train mode`` is the forward as trained (batch statistics for ``batch``, the moving averages
for ``moving_average``, r/d-corrected batch statistics for ``renorm``); ``eval mode`` uses the
population estimates. A gap between the two is the train/test mismatch that normalizing with
batch statistics creates; divergence is the blow-up that normalizing with moving averages is
said to cause.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

SIGNALS = ("nonfinite_loss", "nonfinite_params", "loss_explosion", "param_norm", "activations")


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


@dataclass
class DivergenceDetector:
    """Decides that a run blew up, and from which step.

    Fires on the first of: a non-finite loss; non-finite parameters; a loss above
    ``loss_factor`` times the first loss; a parameter norm above ``param_norm_factor`` times the
    initial one; pre-normalization activations with RMS above ``activation_bound``.
    """

    loss_factor: float = 10.0
    param_norm_factor: float = 100.0
    activation_bound: float = 1e4
    first_loss: float | None = None
    initial_param_norm: float | None = None

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
            return Divergence(step, "param_norm", param_norm)
        return None

    def check_activations(self, prenorm_rms: float, step: int) -> Divergence | None:
        if not prenorm_rms <= self.activation_bound:  # catches nan as well
            return Divergence(step, "activations", prenorm_rms)
        return None

    def state_dict(self) -> dict[str, float | None]:
        return {"first_loss": self.first_loss, "initial_param_norm": self.initial_param_norm}

    def load_state_dict(self, state: dict[str, float | None]) -> None:
        self.first_loss = state["first_loss"]
        self.initial_param_norm = state["initial_param_norm"]
