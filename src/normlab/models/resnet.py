"""The CIFAR ResNet of He et al. (2016, §4.2) with basic blocks; its convs are drawn from
Kaiming normal (fan_out, relu) as torchvision does."""

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from normlab.models.parts import NormFactory, check_ndim, conv, global_avg_pool, kaiming, normed
from normlab.models.registry import Model, register


class BasicBlock(nn.Module):
    """He et al. (2016) basic block: two 3x3 convs, identity or projection shortcut.

    ``relu(norm2(conv2(relu(norm1(conv1(x))))) + shortcut(x))``; when stride or channels
    change, the shortcut is a 1x1 conv followed by a norm (option B).
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, norm: NormFactory, bias: bool
    ) -> None:
        super().__init__()
        self.conv1 = kaiming(conv(2, in_channels, out_channels, 3, stride, bias))
        self.norm1 = norm(out_channels)
        self.conv2 = kaiming(conv(2, out_channels, out_channels, 3, 1, bias))
        self.norm2 = norm(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            projection = kaiming(conv(2, in_channels, out_channels, 1, stride, bias))
            self.shortcut = nn.Sequential(
                OrderedDict([("conv", projection), ("norm", norm(out_channels))])
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet of He et al. (2016, §4.2): 3x3 stem, 3 stages of n basic blocks, head.

    Stages have ``width``, ``2 * width``, ``4 * width`` channels; stages 2 and 3 halve the
    resolution in their first block. Depth is ``6n + 2`` counting convs on the main path and
    the head.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        norm: NormFactory,
        blocks_per_stage: int,
        width: int,
        bias_before_norm: bool,
    ) -> None:
        super().__init__()
        stem_conv = kaiming(conv(2, in_channels, width, 3, 1, bias_before_norm))
        self.stem = normed("conv", stem_conv, norm)
        stages = []
        c_in = width
        for stage, c_out in enumerate([width, 2 * width, 4 * width]):
            blocks = []
            for index in range(blocks_per_stage):
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(BasicBlock(c_in, c_out, stride, norm, bias_before_norm))
                c_in = c_out
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(global_avg_pool(self.stages(self.stem(x))))


def _build_resnet(
    input_shape: tuple[int, ...],
    num_classes: int,
    norm: NormFactory,
    depth: int,
    width: int,
    bias: bool,
) -> nn.Module:
    """Input (C, H, W); ``depth`` is 6n + 2 (checked by the registry: ``allows_depth``)."""
    check_ndim(input_shape, 3, "resnet20")
    return ResNet(input_shape[0], num_classes, norm, (depth - 2) // 6, width, bias)


register(
    Model(
        "resnet20",
        _build_resnet,
        depth=20,
        width=16,
        allows_depth=lambda depth: depth >= 8 and (depth - 2) % 6 == 0,
        depths="6n+2 for resnet (8, 14, 20, 32, ...)",
    )
)
