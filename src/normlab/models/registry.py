"""The models normlab knows, each registered by its own module, and the models a user brings
from outside the package.

A registered :class:`Model` is built by :func:`build_model` from the input shape, the number of
classes, the norm factory and its ``depth``/``width``/``bias_before_norm``/``centred_weights``
(the layers before the norms with centred weights, :func:`~normlab.models.parts.centre_weights`).
A run's ``model`` config node becomes a builder through :func:`choose`: either ``name: NAME`` of
a registered model, or ``_target_: package.module.Class`` (a file ``NAME.yaml`` in the
``model`` group of a user's config directory) built as ``Class(input_shape, num_classes, norm,
**options)`` with the keywords under ``options``; ``norm(channels)`` builds the run's norm
layer for a layer of ``channels`` channels, the contract the registered models follow.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from torch import nn

from normlab import targets
from normlab.errors import ConfigError
from normlab.models.parts import NormFactory, centre_prenorm_weights

# what normlab passes a model first, by position: a model from outside takes the same
CONTRACT = ("input_shape", "num_classes", "norm")
Builder = Callable[[tuple[int, ...], int, NormFactory], nn.Module]


def _any_depth(depth: int) -> bool:
    return True


@dataclass(frozen=True)
class Model:
    """One registered model: ``build(input_shape, num_classes, norm, depth, width,
    bias_before_norm)``, its default depth and width, and the depths it allows beyond >= 1
    (``allows_depth``, described by ``depths``)."""

    name: str
    build: Callable[[tuple[int, ...], int, NormFactory, int, int, bool], nn.Module]
    depth: int
    width: int
    allows_depth: Callable[[int], bool] = _any_depth
    depths: str = "a number >= 1"


_MODELS: dict[str, Model] = {}


def register(model: Model) -> Model:
    if model.name in _MODELS:
        raise ValueError(f"model {model.name!r} is registered twice")
    _MODELS[model.name] = model
    return model


def names() -> tuple[str, ...]:
    """Every registered model, in registration order."""
    return tuple(_MODELS)


def get(name: str) -> Model:
    if name not in _MODELS:
        raise ValueError(f"model must be one of {', '.join(_MODELS)}; got {name!r}")
    return _MODELS[name]


def build_model(
    name: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    norm: NormFactory,
    *,
    depth: int | None = None,
    width: int | None = None,
    bias_before_norm: bool = False,
    centred_weights: bool = False,
) -> nn.Module:
    """Build registered classifier ``name`` for inputs of shape ``input_shape`` (no batch dim).

    ``norm(channels)`` is called once per hidden linear/conv layer, in module order.
    ``depth``/``width`` default to the model's; for resnet20 ``depth`` is the ResNet depth
    6n + 2 and ``width`` the first stage's channels. ``centred_weights``: every layer before a
    norm computes with its weight centred per output unit. Returns logits (N, num_classes).
    """
    model = get(name)
    depth = model.depth if depth is None else depth
    width = model.width if width is None else width
    _check_positive("depth", depth)
    _check_positive("width", width)
    _check_positive("num_classes", num_classes)
    if not model.allows_depth(depth):
        raise ValueError(f"depth for {name} must be {model.depths}, got {depth}")
    if not input_shape or min(input_shape) < 1:
        raise ValueError(f"input_shape must be non-empty and positive, got {tuple(input_shape)}")
    built = model.build(tuple(input_shape), num_classes, norm, depth, width, bias_before_norm)
    return centre_prenorm_weights(built) if centred_weights else built


def choose(
    name: str,
    target: str | None = None,
    options: Mapping[str, Any] | None = None,
    depth: int | None = None,
    width: int | None = None,
    bias_before_norm: bool = False,
    centred_weights: bool = False,
) -> Builder:
    """The builder ``(input_shape, num_classes, norm) -> model`` a run's ``model`` node names:
    registered (no ``target``), or from outside by ``target``, named after its YAML file.
    Raises :class:`ConfigError` naming the bad key."""
    options = dict(options or {})
    if target is None:
        if name not in _MODELS:
            allowed = f"one of {', '.join(_MODELS)}, or a model config with _target_"
            raise ConfigError("model.name", name, allowed)
        if options:
            raise ConfigError("model.options", options, f"empty: {name} is a registered model")
        return partial(
            build_model,
            name,
            depth=depth,
            width=width,
            bias_before_norm=bias_before_norm,
            centred_weights=centred_weights,
        )
    if name in _MODELS:
        raise ConfigError(
            "model.name", name, f"a name no registered model has ({', '.join(_MODELS)})"
        )
    unset = (
        ("depth", depth),
        ("width", width),
        ("bias_before_norm", bias_before_norm),
        ("centred_weights", centred_weights),
    )
    for key, value in unset:
        if value is not None and value is not False:
            allowed = "unset: a model with _target_ takes its own keywords, under model.options"
            raise ConfigError(f"model.{key}", value, allowed)
    cls = targets.locate("model._target_", target)
    targets.check_call("model", target, cls, CONTRACT, options)
    return partial(cls, **options)


def _check_positive(argument: str, value: int) -> None:
    if value < 1:
        raise ValueError(f"{argument} must be >= 1, got {value}")
