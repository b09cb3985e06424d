"""The pieces the built-in models are made of: biased or bias-free linear and conv layers, the
``layer -> norm -> ReLU`` block with readable child names, global average pooling, and weight
centralization of the layers that feed a norm."""

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils import parametrize

NormFactory = Callable[[int], nn.Module]
# The layers a built-in model puts before a norm (and as its head): their weight's first dim is
# the output unit, as for every nn.Linear and nn.Conv*d, grouped convs included.
WEIGHTED_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
HEAD = "head"


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


def prenorm_layers(model: nn.Module) -> list[nn.Module]:
    """The linear/conv layers whose output feeds a norm: every one but the head."""
    return [
        module
        for name, module in model.named_modules()
        if isinstance(module, WEIGHTED_LAYERS) and name != HEAD
    ]


def prenorm_biases(model: nn.Module) -> list[nn.Parameter]:
    """The biases of the layers whose output feeds a norm (``bias_before_norm``)."""
    return [layer.bias for layer in prenorm_layers(model) if layer.bias is not None]


class CentredWeight(nn.Module):
    """Weight centralization (Yan et al. 2020, the authors' ``CenConv2d``): the weight less its
    mean over every dim but the first, so each output unit's weights over its inputs (and
    kernel positions) sum to zero. Gradients reach the raw weight through the subtraction; the
    bias is left alone."""

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight - weight.mean(dim=tuple(range(1, weight.dim())), keepdim=True)


def centre_weights(layer: nn.Module) -> nn.Module:
    """``layer`` computing with its centred ``weight`` (``torch.nn.utils.parametrize``): the raw
    weight is the parameter trained, ``layer.weight`` its centred value."""
    parametrize.register_parametrization(layer, "weight", CentredWeight())
    return layer


def centre_prenorm_weights(model: nn.Module) -> nn.Module:
    """``model`` with every layer that feeds a norm computing with centred weights."""
    for layer in prenorm_layers(model):
        centre_weights(layer)
    return model


def forward_activations(model: nn.Module, x: torch.Tensor) -> int:
    """The values every leaf module of ``model`` outputs in its forward of ``x`` (as it is:
    train or eval mode, on ``x``'s device, the meta device included); a leaf's output other than
    one tensor (a user's layer may return a tuple) counts its tensors."""
    counted: list[int] = []

    def count(module: nn.Module, inputs: tuple, out: object) -> None:
        outputs = out if isinstance(out, (tuple, list)) else (out,)
        counted.append(sum(o.numel() for o in outputs if isinstance(o, torch.Tensor)))

    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    hooks = [m.register_forward_hook(count) for m in leaves]
    try:
        model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return sum(counted)
