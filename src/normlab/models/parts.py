"""The pieces the built-in models are made of: biased or bias-free linear and conv layers, the
``layer -> norm -> ReLU`` block with readable child names, global average pooling."""

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn

NormFactory = Callable[[int], nn.Module]


def with_zero_bias(layer: nn.Module) -> nn.Module:
    layer.bias = nn.Parameter(torch.zeros(layer.weight.shape[0]))
    return layer


def linear(in_features: int, out_features: int, bias: bool) -> nn.Module:
    layer = nn.Linear(in_features, out_features, bias=False)
    return with_zero_bias(layer) if bias else layer


def conv(
    dim: int, in_channels: int, out_channels: int, kernel_size: int, stride: int, bias: bool
) -> nn.Module:
    conv_cls = nn.Conv1d if dim == 1 else nn.Conv2d
    layer = conv_cls(
        in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False
    )
    return with_zero_bias(layer) if bias else layer


def kaiming(layer: nn.Module) -> nn.Module:
    nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
    return layer


def normed(layer_name: str, layer: nn.Module, norm: NormFactory) -> nn.Sequential:
    """``layer -> norm -> ReLU`` with the children named ``<layer_name>``, ``norm``, ``relu``."""
    # Not in-place: a norm may keep its output for backward.
    parts = [(layer_name, layer), ("norm", norm(layer.weight.shape[0])), ("relu", nn.ReLU())]
    return nn.Sequential(OrderedDict(parts))


def global_avg_pool(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).mean(2)


def check_ndim(input_shape: tuple[int, ...], ndim: int, name: str) -> None:
    if len(input_shape) != ndim:
        raise ValueError(
            f"input_shape for model {name!r} must have {ndim} dims, got {tuple(input_shape)}"
        )


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
