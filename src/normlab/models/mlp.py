"""The multilayer perceptron: flatten, hidden ``linear -> norm -> ReLU`` blocks, linear head."""

from itertools import pairwise
from math import prod

import torch
from torch import nn

from normlab.models.parts import NormFactory, linear, normed
from normlab.models.registry import Model, register


class MLP(nn.Module):
    """Flatten, ``depth`` hidden ``linear -> norm -> ReLU`` blocks of ``width`` units, head."""

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        norm: NormFactory,
        depth: int,
        width: int,
        bias_before_norm: bool,
    ) -> None:
        super().__init__()
        sizes = [in_features] + [width] * depth
        self.blocks = nn.Sequential(
            *(
                normed("linear", linear(n_in, n_out, bias_before_norm), norm)
                for n_in, n_out in pairwise(sizes)
            )
        )
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x.flatten(1)))


def _build_mlp(
    input_shape: tuple[int, ...],
    num_classes: int,
    norm: NormFactory,
    depth: int,
    width: int,
    bias: bool,
) -> nn.Module:
    return MLP(prod(input_shape), num_classes, norm, depth, width, bias)


register(Model("mlp", _build_mlp, depth=3, width=256))
