"""Plain convolutional nets, 1-D (``cnn1d``, on sequences) and 2-D (``cnn``, on images):
``conv -> norm -> ReLU`` blocks, global average pool, linear head."""

import torch
from torch import nn

from normlab.models.parts import NormFactory, check_ndim, conv, global_avg_pool, normed
from normlab.models.registry import Model, register


class ConvNet(nn.Module):
    """Plain ``conv -> norm -> ReLU`` blocks, global average pool, linear head (1-D or 2-D)."""

    def __init__(
        self,
        dim: int,
        channels: list[int],
        strides: list[int],
        norm: NormFactory,
        num_classes: int,
        bias_before_norm: bool,
    ) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            *(
                normed("conv", conv(dim, c_in, c_out, 3, stride, bias_before_norm), norm)
                for c_in, c_out, stride in zip(channels[:-1], channels[1:], strides, strict=True)
            )
        )
        self.head = nn.Linear(channels[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(global_avg_pool(self.blocks(x)))


def _build_cnn1d(
    input_shape: tuple[int, ...],
    num_classes: int,
    norm: NormFactory,
    depth: int,
    width: int,
    bias: bool,
) -> nn.Module:
    """Input (C, L); stride 2 on every block after the first, so (1, 40) -> 40, 20, 10, ..."""
    check_ndim(input_shape, 2, "cnn1d")
    channels = [input_shape[0]] + [width] * depth
    strides = [1] + [2] * (depth - 1)
    return ConvNet(1, channels, strides, norm, num_classes, bias)


register(Model("cnn1d", _build_cnn1d, depth=3, width=32))


def _build_cnn(
    input_shape: tuple[int, ...],
    num_classes: int,
    norm: NormFactory,
    depth: int,
    width: int,
    bias: bool,
) -> nn.Module:
    """Input (C, H, W); every second block has stride 2, channels double after it.

    Default depth 4: channels [w, w, 2w, 2w], strides [1, 2, 1, 2], so 28x28 -> 7x7.
    """
    check_ndim(input_shape, 3, "cnn")
    channels = [input_shape[0]] + [width * 2 ** (i // 2) for i in range(depth)]
    strides = [2 if i % 2 else 1 for i in range(depth)]
    return ConvNet(2, channels, strides, norm, num_classes, bias)


register(Model("cnn", _build_cnn, depth=4, width=32))
