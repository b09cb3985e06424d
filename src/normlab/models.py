"""Classifiers with a configurable normalization layer after every hidden linear/conv layer.

Every hidden layer is ``layer -> norm(channels) -> ReLU``; the classifier head is a plain
``nn.Linear`` with a bias and no norm. The norm comes from a factory the caller passes in
(``norm(channels) -> nn.Module``, working on ``(N, C)`` and ``(N, C, *spatial)``), so this
module knows nothing about which normalization is being studied. Norm modules sit under
readable names (``blocks.0.norm``, ``stem.norm``, ``stages.1.0.shortcut.norm``) because the
trainer logs per-layer diagnostics under ``named_modules()`` names.

``bias_before_norm`` decides whether the layer feeding each norm has a bias. With batch
statistics that bias is cancelled by the mean subtraction and gets zero gradient; Ioffe &
Szegedy (2015, §2) show that normalizing without the gradient accounting for the statistics
makes such a bias grow without bound, so the switch exists to reproduce that. When on, the
bias starts at zero and is added after the weights are drawn, so for a fixed seed both
settings have identical weights and compute the same function at initialization.

Initialization: mlp, cnn1d and cnn use PyTorch's default ``nn.Linear``/``nn.Conv*d`` init;
resnet20 draws its convs from Kaiming normal (fan_out, relu) as torchvision does. Heads use
PyTorch's default ``nn.Linear`` init everywhere. Norm modules are never touched.
"""

from collections import OrderedDict
from collections.abc import Callable
from itertools import pairwise
from math import prod

import torch
import torch.nn.functional as F
from torch import nn

NormFactory = Callable[[int], nn.Module]

MODELS = ("mlp", "cnn1d", "cnn", "resnet20")

# (depth, width) used when the caller passes None.
DEFAULTS = {"mlp": (3, 256), "cnn1d": (3, 32), "cnn": (4, 32), "resnet20": (20, 16)}


def _with_zero_bias(layer: nn.Module) -> nn.Module:
    layer.bias = nn.Parameter(torch.zeros(layer.weight.shape[0]))
    return layer


def _linear(in_features: int, out_features: int, bias: bool) -> nn.Module:
    layer = nn.Linear(in_features, out_features, bias=False)
    return _with_zero_bias(layer) if bias else layer


def _conv(
    dim: int, in_channels: int, out_channels: int, kernel_size: int, stride: int, bias: bool
) -> nn.Module:
    conv_cls = nn.Conv1d if dim == 1 else nn.Conv2d
    conv = conv_cls(
        in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False
    )
    return _with_zero_bias(conv) if bias else conv


def _kaiming(conv: nn.Module) -> nn.Module:
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


def _normed(layer_name: str, layer: nn.Module, norm: NormFactory) -> nn.Sequential:
    """``layer -> norm -> ReLU`` with the children named ``<layer_name>``, ``norm``, ``relu``."""
    # Not in-place: a norm may keep its output for backward.
    parts = [(layer_name, layer), ("norm", norm(layer.weight.shape[0])), ("relu", nn.ReLU())]
    return nn.Sequential(OrderedDict(parts))


def _global_avg_pool(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).mean(2)


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
                _normed("linear", _linear(n_in, n_out, bias_before_norm), norm)
                for n_in, n_out in pairwise(sizes)
            )
        )
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x.flatten(1)))


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
                _normed("conv", _conv(dim, c_in, c_out, 3, stride, bias_before_norm), norm)
                for c_in, c_out, stride in zip(channels[:-1], channels[1:], strides, strict=True)
            )
        )
        self.head = nn.Linear(channels[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(_global_avg_pool(self.blocks(x)))


class BasicBlock(nn.Module):
    """He et al. (2016) basic block: two 3x3 convs, identity or projection shortcut.

    ``relu(norm2(conv2(relu(norm1(conv1(x))))) + shortcut(x))``; when stride or channels
    change, the shortcut is a 1x1 conv followed by a norm (option B).
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, norm: NormFactory, bias: bool
    ) -> None:
        super().__init__()
        self.conv1 = _kaiming(_conv(2, in_channels, out_channels, 3, stride, bias))
        self.norm1 = norm(out_channels)
        self.conv2 = _kaiming(_conv(2, out_channels, out_channels, 3, 1, bias))
        self.norm2 = norm(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            projection = _kaiming(_conv(2, in_channels, out_channels, 1, stride, bias))
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
        stem_conv = _kaiming(_conv(2, in_channels, width, 3, 1, bias_before_norm))
        self.stem = _normed("conv", stem_conv, norm)
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
        return self.head(_global_avg_pool(self.stages(self.stem(x))))


def _check_positive(argument: str, value: int) -> None:
    if value < 1:
        raise ValueError(f"{argument} must be >= 1, got {value}")


def _check_ndim(input_shape: tuple[int, ...], ndim: int, name: str) -> None:
    if len(input_shape) != ndim:
        raise ValueError(
            f"input_shape for model {name!r} must have {ndim} dims, got {tuple(input_shape)}"
        )


def _build_mlp(
    input_shape: tuple[int, ...],
    num_classes: int,
    norm: NormFactory,
    depth: int,
    width: int,
    bias: bool,
) -> nn.Module:
    return MLP(prod(input_shape), num_classes, norm, depth, width, bias)


def _build_cnn1d(
    input_shape: tuple[int, ...],
    num_classes: int,
    norm: NormFactory,
    depth: int,
    width: int,
    bias: bool,
) -> nn.Module:
    """Input (C, L); stride 2 on every block after the first, so (1, 40) -> 40, 20, 10, ..."""
    _check_ndim(input_shape, 2, "cnn1d")
    channels = [input_shape[0]] + [width] * depth
    strides = [1] + [2] * (depth - 1)
    return ConvNet(1, channels, strides, norm, num_classes, bias)


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
    _check_ndim(input_shape, 3, "cnn")
    channels = [input_shape[0]] + [width * 2 ** (i // 2) for i in range(depth)]
    strides = [2 if i % 2 else 1 for i in range(depth)]
    return ConvNet(2, channels, strides, norm, num_classes, bias)


def _build_resnet(
    input_shape: tuple[int, ...],
    num_classes: int,
    norm: NormFactory,
    depth: int,
    width: int,
    bias: bool,
) -> nn.Module:
    _check_ndim(input_shape, 3, "resnet20")
    if depth < 8 or (depth - 2) % 6 != 0:
        raise ValueError(
            f"depth for resnet20 must be 6n + 2 with n >= 1 (20, 32, ...), got {depth}"
        )
    return ResNet(input_shape[0], num_classes, norm, (depth - 2) // 6, width, bias)


_BUILDERS = {
    "mlp": _build_mlp,
    "cnn1d": _build_cnn1d,
    "cnn": _build_cnn,
    "resnet20": _build_resnet,
}


def prenorm_biases(model: nn.Module) -> list[nn.Parameter]:
    """The biases of the linear/conv layers whose output feeds a norm (``bias_before_norm``):
    the head, which feeds none, is left out."""
    return [
        module.bias
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear | nn.Conv1d | nn.Conv2d)
        and module.bias is not None
        and name != "head"
    ]


def build_model(
    name: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    norm: NormFactory,
    *,
    depth: int | None = None,
    width: int | None = None,
    bias_before_norm: bool = False,
) -> nn.Module:
    """Build classifier ``name`` for inputs of shape ``input_shape`` (no batch dim).

    ``norm(channels)`` is called once per hidden linear/conv layer, in module order.
    ``depth``/``width`` default to ``DEFAULTS[name]``; for resnet20 ``depth`` is the ResNet
    depth 6n + 2 and ``width`` the first stage's channels. Returns logits (N, num_classes).
    """
    if name not in _BUILDERS:
        raise ValueError(f"model must be one of {', '.join(MODELS)}; got {name!r}")
    default_depth, default_width = DEFAULTS[name]
    depth = default_depth if depth is None else depth
    width = default_width if width is None else width
    _check_positive("depth", depth)
    _check_positive("width", width)
    _check_positive("num_classes", num_classes)
    if not input_shape or min(input_shape) < 1:
        raise ValueError(f"input_shape must be non-empty and positive, got {tuple(input_shape)}")
    return _BUILDERS[name](tuple(input_shape), num_classes, norm, depth, width, bias_before_norm)
