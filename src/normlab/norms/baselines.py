"""``group``, ``layer``, ``none``: batch-independent baselines. A sample's output ignores the
rest of its batch, so they have no running statistics, no train/eval difference and nothing
to schedule."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from normlab.errors import ConfigError
from normlab.norms.base import check_positive
from normlab.norms.options import RunFacts, at_least, option, positive
from normlab.norms.registry import Mode, register


class GroupNorm(nn.GroupNorm):
    """Group normalization (Wu & He 2018, arXiv 1803.08494): statistics per example over
    groups of channels (and spatial dims)."""

    batch_independent = True

    def __init__(self, num_features: int, groups: int = 32, eps: float = 1e-5) -> None:
        if int(groups) < 1 or num_features % int(groups) != 0:
            raise ValueError(
                f"groups must be >= 1 and divide num_features={num_features}, got {groups}"
            )
        super().__init__(int(groups), num_features, eps=check_positive("eps", eps))


class LayerNorm(GroupNorm):
    """Layer normalization over channels and spatial dims of each example (GroupNorm, 1 group)."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__(num_features, groups=1, eps=eps)


class Identity(nn.Identity):
    """No normalization."""

    batch_independent = True

    def __init__(self, num_features: int) -> None:
        super().__init__()


@dataclass(frozen=True)
class GroupOptions:
    eps: float = option(1e-5, positive)
    groups: int = option(8, at_least(1))

    def check(self, facts: RunFacts) -> None:
        for width in facts.widths:
            if width % self.groups:
                raise ConfigError(
                    "groups",
                    self.groups,
                    f"a divisor of every hidden width of model={facts.model} (it has {width})",
                )


@dataclass(frozen=True)
class LayerOptions:
    eps: float = option(1e-5, positive)


@dataclass(frozen=True)
class NoOptions:
    pass


GROUP = register(Mode("group", GroupNorm, GroupOptions))
LAYER = register(Mode("layer", LayerNorm, LayerOptions))
NONE = register(Mode("none", Identity, NoOptions))
