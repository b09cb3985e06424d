"""A mode's options: one frozen dataclass, each field holding its default and allowed values.

    @dataclass(frozen=True)
    class OnlineOptions:
        eps: float = option(1e-5, positive)
        alpha_fwd: float = option(0.999, open_interval(0.0, 1.0))

:func:`parse` builds an instance from a config node, converting each value to its field's type,
and raises :class:`~normlab.errors.ConfigError` naming the first bad key, its value and what is
allowed; an options class may add a ``check(self, facts)`` for conditions between options or on
the run (:class:`RunFacts`). The layer is then built as ``Layer(num_features, **fields)``.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from normlab.errors import ConfigError
from normlab.schedules import ScheduleConfig


@dataclass(frozen=True)
class Allowed:
    """What a value may be: ``text`` for the message, ``test`` for the check."""

    text: str
    test: Callable[[Any], bool]

    def __call__(self, value: Any) -> bool:
        return self.test(value)


def option(default: Any, allowed: Allowed | None = None) -> Any:
    """A dataclass field with its default and the values it accepts."""
    return field(default=default, metadata={"allowed": allowed})


def scheduled(**default: Any) -> Any:
    """A field holding the schedule of a layer attribute the trainer sets per step (renorm's
    ``rmax``): a :class:`~normlab.schedules.ScheduleConfig`, ``default`` its fields. The layer
    class names the attribute in its ``schedules`` with the node ``norm.<field>``."""
    return field(default_factory=lambda: ScheduleConfig(**default), metadata={"allowed": None})


positive = Allowed("a number > 0", lambda v: v > 0)


def at_least(low: float) -> Allowed:
    return Allowed(f"a number >= {low:g}", lambda v: v >= low)


def open_interval(low: float, high: float) -> Allowed:
    return Allowed(f"a number in ({low:g}, {high:g})", lambda v: low < v < high)


def one_of(*values: Any) -> Allowed:
    return Allowed(f"one of {', '.join(map(str, values))}", lambda v: v in values)


def closed_interval(low: float, high: float) -> Allowed:
    return Allowed(f"a number in [{low:g}, {high:g}]", lambda v: low <= v <= high)


def optional(allowed: Allowed) -> Allowed:
    return Allowed(f"null or {allowed.text}", lambda v: v is None or allowed(v))


@dataclass(frozen=True)
class SwitchOptions:
    """Options every running-statistics mode takes, whatever its own: at the fraction
    ``switch_at`` of training (null: never) its layers switch from the statistics of each batch
    to their population statistics (Wu & Johnson 2021, arXiv 2105.07576, FrozenBN), and
    ``switch_freeze`` stops the running statistics from absorbing batches after the switch. The
    trainer carries the switch out (:mod:`normlab.trainer`)."""

    switch_at: float | None = option(None, optional(closed_interval(0.0, 1.0)))
    switch_freeze: bool = option(False)


@dataclass(frozen=True)
class SyncOptions:
    """Options every mode's node holds for data-parallel runs (``distributed.world_size > 1``):
    ``sync`` aggregates each layer's batch statistics over every rank's slice of the batch
    (:mod:`normlab.norms.sync`), false keeps each device's own. Only a layer that declares
    ``syncable`` takes it."""

    sync: bool = option(False)


@dataclass(frozen=True)
class RunFacts:
    """What an option may need to know of the run it is checked for."""

    batch_size: int
    widths: tuple[int, ...]  # the channels of every norm layer the model builds
    model: str


def option_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def config_schema(mode: str, cls: type) -> type:
    """A structured config for Hydra (``conf/norm/NAME.yaml`` extends it): ``mode``, every
    option with its type and default, so a YAML need not repeat them and every option can be
    overridden on the command line, and the :class:`SwitchOptions` (every mode's node holds
    them, so that a mode without running statistics refuses them with its own message) and the
    :class:`SyncOptions`."""
    specs = [("mode", str, field(default=mode))]
    for options in (cls, SwitchOptions, SyncOptions):
        hints = typing.get_type_hints(options)
        specs += [(f.name, hints[f.name], _schema_field(f)) for f in dataclasses.fields(options)]
    name = "".join(part.title() for part in mode.split("_")) + "NormConfig"
    return dataclasses.make_dataclass(name, specs)


def _schema_field(spec: dataclasses.Field) -> Any:
    if spec.default_factory is not dataclasses.MISSING:
        return field(default_factory=spec.default_factory)
    return field(default=spec.default)


def parse(cls: type, values: Mapping[str, Any], prefix: str) -> Any:
    """``cls(**values)`` with every value converted and checked; ``prefix`` (``norm``) begins
    every key named in an error. Keys not in ``values`` take their defaults."""
    names = option_names(cls)
    for key in values:
        if key not in names:
            allowed = f"an option of this mode: {', '.join(names)}" if names else "no options"
            raise ConfigError(f"{prefix}.{key}", values[key], allowed)
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for spec in dataclasses.fields(cls):
        if spec.name not in values:
            continue
        value = _converted(hints[spec.name], values[spec.name])
        allowed = spec.metadata.get("allowed")
        if value is BAD or (allowed is not None and not _passes(allowed, value)):
            text = allowed.text if allowed is not None else _type_text(hints[spec.name])
            raise ConfigError(f"{prefix}.{spec.name}", values[spec.name], text)
        kwargs[spec.name] = value
    return cls(**kwargs)


def check(options: Any, facts: RunFacts, prefix: str) -> None:
    """The options class's own ``check(facts)``, if any, its keys prefixed."""
    method = getattr(options, "check", None)
    if method is None:
        return
    try:
        method(facts)
    except ConfigError as error:
        raise ConfigError(f"{prefix}.{error.key}", error.value, error.allowed) from None


BAD = object()


def _converted(hint: Any, value: Any) -> Any:
    """``value`` as type ``hint`` (``float``, ``int``, ``bool``, ``str`` or ``X | None``), or
    :data:`BAD`. Integers pass as floats; booleans pass only as booleans."""
    if _is_optional(hint):
        if value is None:
            return None
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if hint is bool:
        return value if isinstance(value, bool) else BAD
    if isinstance(value, bool):
        return BAD
    if hint is float and isinstance(value, int | float):
        return float(value)
    if hint is int and isinstance(value, int):
        return value
    if hint is str and isinstance(value, str):
        return value
    if hint is ScheduleConfig:
        return as_schedule(value)
    return BAD


def as_schedule(value: Any) -> Any:
    """A schedule node (a mapping of :class:`~normlab.schedules.ScheduleConfig`'s fields) as
    one, or :data:`BAD`."""
    if isinstance(value, ScheduleConfig):
        return value
    if not isinstance(value, Mapping):
        return BAD
    try:
        return ScheduleConfig(**dict(value))
    except TypeError:
        return BAD


def _passes(allowed: Allowed, value: Any) -> bool:
    if isinstance(value, float) and math.isnan(value):
        return False
    try:
        return bool(allowed(value))
    except TypeError:
        return False


def _is_optional(hint: Any) -> bool:
    return isinstance(hint, types.UnionType) and type(None) in typing.get_args(hint)


def _type_text(hint: Any) -> str:
    if _is_optional(hint):
        inner = next(a for a in typing.get_args(hint) if a is not type(None))
        return f"null or {_type_text(inner)}"
    texts = {bool: "true or false", float: "a number", int: "an integer", str: "a string"}
    texts[ScheduleConfig] = "a schedule (kind, value, start, end, ... of normlab.schedules)"
    return texts.get(hint, str(hint))
