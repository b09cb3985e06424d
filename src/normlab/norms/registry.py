"""The normalization modes normlab knows, each registered by its own module, and the modes a
user brings from outside the package.

A :class:`Mode` is everything about one mode that the rest of normlab derives from: the layer
class, its options (a dataclass, see :mod:`normlab.norms.options`), how its runs are drawn
(:class:`~normlab.labels.Style`: a built-in mode's are :data:`normlab.labels.BUILT_IN`'s, which
the figures read there without torch; a mode registered from outside the package brings its
own), its extra wandb tags, the fields it adds to a run's record and the per-step quantities
its runs log beyond every mode's (:class:`~normlab.quantities.Quantity`, each with the schedule
it is drawn against), which each run's record declares. Which layer attributes follow
schedules, and from which config node, is the layer class's own ``schedules``
(:class:`~normlab.norms.base.Scheduled`): ``momentum`` from the run's ``momentum`` node, a
mode's own (renorm's ``rmax``) from its option of that name
(:func:`~normlab.norms.options.scheduled`), which a mode from outside gives in its YAML. The
mode list, the config checks, the trainer's schedules, the run labels and the tags all come
from here.

A run's norm config node becomes a :class:`NormChoice` through :func:`choose`: either
``mode: NAME`` of a registered mode with its options, or ``_target_: package.module.Class``
with the class's keyword options (a file ``NAME.yaml`` in the ``norm`` group of a user's config
directory), built as ``Class(num_features, **options)`` with Hydra's ``instantiate``.

Every mode whose layer is a :class:`~normlab.norms.base.RunningStatsNorm` also takes the
:class:`~normlab.norms.options.SwitchOptions` (``norm.switch_at``, ``norm.switch_freeze``): they
are the choice's ``switch``, never the layer's keywords, and appear in the run's record only
when set away from their defaults (so no earlier run's id changes). Likewise
:class:`~normlab.norms.options.SyncOptions` (``norm.sync``), the choice's ``sync``, taken only by
a layer whose class says ``syncable``.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from normlab import labels
from normlab.errors import ConfigError
from normlab.labels import Style
from normlab.norms import options as opts
from normlab.norms.base import RunningStatsNorm, Scheduled
from normlab.quantities import DECLARED, Quantity


@dataclass(frozen=True)
class Mode:
    """One registered normalization mode.

    ``styles`` are how its runs are drawn, the default label first: a built-in mode's are
    :data:`normlab.labels.BUILT_IN`'s, filled in by :func:`register`; a mode from outside the
    package gives its own. ``label(options)`` names the style a run is drawn under (default:
    the mode's first style); ``tags(options)`` gives extra wandb tags; ``record(options,
    batch_size)`` extra fields for the run's ``summary.json`` (written where the mode is built,
    read by the figures).
    ``quantities`` are the per-step columns the mode's layers log beyond every mode's, each
    drawn against its ``bound``, one of the layer's schedules (a run's record declares them).
    """

    name: str
    layer: type[nn.Module]
    options: type
    styles: tuple[Style, ...] = ()
    label: Callable[[Any], str] | None = None
    tags: Callable[[Any], list[str]] | None = None
    record: Callable[[Any, int], dict[str, Any]] | None = None
    quantities: tuple[Quantity, ...] = ()

    def schema(self) -> type:
        """The structured config ``conf/norm/NAME.yaml`` extends (:func:`options.config_schema`)."""
        return opts.config_schema(self.name, self.options)


_MODES: dict[str, Mode] = {}


def register(mode: Mode) -> Mode:
    """Add ``mode`` to the registry, a built-in one with its styles from :mod:`normlab.labels`."""
    if mode.name in _MODES:
        raise ValueError(f"normalization mode {mode.name!r} is registered twice")
    if mode.name in labels.BUILT_IN:
        if mode.styles:
            raise ValueError(f"{mode.name}: a built-in mode's styles are normlab.labels.BUILT_IN's")
        mode = dataclasses.replace(mode, styles=labels.BUILT_IN[mode.name])
    elif not mode.styles:
        raise ValueError(f"{mode.name}: a mode from outside the package gives its styles")
    if not dataclasses.is_dataclass(mode.options):
        raise TypeError(f"{mode.name}: options must be a dataclass, got {mode.options!r}")
    schedules = getattr(mode.layer, "schedules", {})
    for quantity in mode.quantities:
        if quantity.bound is not None and quantity.bound not in schedules:
            raise ValueError(
                f"{mode.name}: {quantity.name} is drawn against {quantity.bound!r}, which is not "
                f"one of {mode.layer.__name__}'s schedules ({', '.join(schedules)})"
            )
    _MODES[mode.name] = mode
    return mode


def names() -> tuple[str, ...]:
    """Every registered mode, in registration order."""
    return tuple(_MODES)


def get(name: str) -> Mode:
    if name not in _MODES:
        raise ValueError(f"mode must be one of {', '.join(_MODES)}, got {name!r}")
    return _MODES[name]


# ----------------------------------------------------------------------------- a run's choice


@dataclass(frozen=True)
class NormChoice:
    """A run's validated normalization: its mode name, options and, for a mode from outside
    the package, the class it names (``target``, ``options`` then a dict of its keywords);
    ``switch``: when its running-statistics layers switch to population statistics."""

    mode: str
    options: Any
    target: str | None = None
    layer_class: type = field(default=nn.Module, compare=False, repr=False)
    switch: opts.SwitchOptions = field(default_factory=opts.SwitchOptions)
    sync: bool = False

    @property
    def registered(self) -> Mode | None:
        return None if self.target else _MODES[self.mode]

    @property
    def schedules(self) -> dict[str, Scheduled]:
        """Attribute -> schedule of the layers this choice builds (none outside the base)."""
        if issubclass(self.layer_class, RunningStatsNorm):
            return dict(self.layer_class.schedules)
        return {}

    def options_dict(self) -> dict[str, Any]:
        """Every option, schedules included, as the config node holds them."""
        if self.target:
            return dict(self.options)
        return {f.name: getattr(self.options, f.name) for f in dataclasses.fields(self.options)}

    def keywords(self) -> dict[str, Any]:
        """The constructor's keywords: the options less the mode's own schedules, which the
        trainer sets per step."""
        own = own_schedules(self.layer_class)
        return {k: v for k, v in self.options_dict().items() if k not in own}

    def build(self, num_features: int) -> nn.Module:
        if self.target:
            from hydra.utils import instantiate

            node = {"_target_": self.target, "_convert_": "all", **self.keywords()}
            return instantiate(node, num_features)
        return self.layer_class(num_features, **self.keywords())

    def config(self) -> dict[str, Any]:
        """The run record's ``norm`` node: the mode, its class if from outside, its options."""
        node: dict[str, Any] = {"mode": self.mode}
        if self.target:
            node["_target_"] = self.target
        options = {
            k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v
            for k, v in self.options_dict().items()
        }
        return {**node, **options, **self.switch_set(), **({"sync": True} if self.sync else {})}

    def switch_set(self) -> dict[str, Any]:
        """The switch options set away from their defaults."""
        default = opts.SwitchOptions()
        return {
            f.name: getattr(self.switch, f.name)
            for f in dataclasses.fields(self.switch)
            if getattr(self.switch, f.name) != getattr(default, f.name)
        }

    def default(self) -> NormChoice:
        """The same mode with every option at its default (for a stable run id)."""
        switch = opts.SwitchOptions()
        if self.target:
            defaults = _signature_defaults(self.layer_class)
            return dataclasses.replace(self, options=defaults, switch=switch, sync=False)
        options = self.options.__class__()
        return dataclasses.replace(self, options=options, switch=switch, sync=False)

    def label(self) -> str:
        mode = self.registered
        if mode is None:
            return self.mode
        return mode.label(self.options) if mode.label else mode.styles[0].label

    def tags(self) -> list[str]:
        mode = self.registered
        return list(mode.tags(self.options)) if mode and mode.tags else []

    def record(self, batch_size: int) -> dict[str, Any]:
        """Fields for ``summary.json``: the drawn label, the number of examples behind each
        batch statistic, the quantities the mode declares (if any) and whatever it adds."""
        fields: dict[str, Any] = {"norm_label": self.label(), "statistics_batch_size": batch_size}
        mode = self.registered
        if mode and mode.quantities:
            fields[DECLARED] = [q.declaration() for q in mode.quantities]
        if mode and mode.record:
            fields.update(mode.record(self.options, batch_size))
        return fields

    def lacks(self) -> list[str]:
        """What a layer from outside the package that is not a running-statistics layer does
        not get (the registered baselines have nothing of the kind to lack)."""
        if self.target is None or issubclass(self.layer_class, RunningStatsNorm):
            return []
        return ["momentum schedules", "diagnostics", "precise-BN"]

    def check(self, facts: opts.RunFacts) -> None:
        if not self.target:
            opts.check(self.options, facts, "norm")
        if self.sync and getattr(self.options, "virtual_batch_size", None) is not None:
            allowed = "false with norm.virtual_batch_size (a ghost batch is one device's own)"
            raise ConfigError("norm.sync", True, allowed)


def choose(node: Mapping[str, Any], name: str | None = None) -> NormChoice:
    """The :class:`NormChoice` of a composed ``norm`` config node. ``name`` is the config
    group's choice (the YAML file's name), which names a mode given by ``_target_``."""
    values = dataclasses.asdict(node) if dataclasses.is_dataclass(node) else dict(node)
    target = values.pop("_target_", None)
    mode = values.pop("mode", None) or name
    switch_values = {k: values.pop(k) for k in opts.option_names(opts.SwitchOptions) if k in values}
    sync_values = {k: values.pop(k) for k in opts.option_names(opts.SyncOptions) if k in values}
    if target is None:
        if mode not in _MODES:
            raise ConfigError(
                "norm.mode", mode, f"one of {', '.join(_MODES)}, or a norm config with _target_"
            )
        registered = _MODES[mode]
        options = opts.parse(registered.options, values, "norm")
        switch = _switch(switch_values, registered.layer)
        sync = _sync(sync_values, registered.layer)
        return NormChoice(mode, options, None, registered.layer, switch, sync)
    if not mode:
        raise ConfigError("norm", target, "a config chosen by name (norm=NAME) or with norm.mode")
    if mode in _MODES:
        raise ConfigError("norm.mode", mode, f"a name no registered mode has ({', '.join(_MODES)})")
    cls = _import_class(target)
    switch = _switch(switch_values, cls)
    sync = _sync(sync_values, cls)
    schedules = own_schedules(cls)
    _check_keywords(cls, target, {k: v for k, v in values.items() if k not in schedules})
    for name in sorted(schedules):
        schedule = opts.as_schedule(values.get(name))
        if schedule is opts.BAD:
            allowed = f"a schedule of {name}, which {target} follows (kind, value, start, ...)"
            raise ConfigError(f"norm.{name}", values.get(name), allowed)
        values[name] = schedule
    return NormChoice(str(mode), values, str(target), cls, switch, sync)


def _switch(values: Mapping[str, Any], layer_class: type) -> opts.SwitchOptions:
    """The switch options of a mode whose layers are ``layer_class``: only a running-statistics
    layer has population statistics to switch to, and freezing needs a switch."""
    switch = opts.parse(opts.SwitchOptions, values, "norm")
    if not issubclass(layer_class, RunningStatsNorm):
        for key, value in values.items():
            if value != getattr(opts.SwitchOptions(), key):
                modes = [m.name for m in _MODES.values() if issubclass(m.layer, RunningStatsNorm)]
                allowed = f"unset: only running-statistics modes ({', '.join(modes)}) switch"
                raise ConfigError(f"norm.{key}", value, allowed)
    if switch.switch_freeze and switch.switch_at is None:
        raise ConfigError("norm.switch_freeze", True, "false unless norm.switch_at is set")
    return switch


def _sync(values: Mapping[str, Any], layer_class: type) -> bool:
    """``norm.sync``: only a layer class that declares ``syncable`` aggregates its statistics
    over ranks (a batch-independent mode has none; ``online``'s run through the samples in
    order, which ranks holding different samples cannot share)."""
    sync = opts.parse(opts.SyncOptions, values, "norm").sync
    if sync and not getattr(layer_class, "syncable", False):
        modes = [m.name for m in _MODES.values() if getattr(m.layer, "syncable", False)]
        raise ConfigError(
            "norm.sync", True, f"false for this mode; true only for {', '.join(modes)}"
        )
    return sync


def own_schedules(layer_class: type) -> set[str]:
    """The attributes ``layer_class`` schedules from options of its own (``norm.<name>``)."""
    declared = getattr(layer_class, "schedules", {})
    return {name for name, s in declared.items() if s.node == f"norm.{name}"}


def _import_class(target: str) -> type:
    from hydra.utils import get_class

    try:
        return get_class(target)
    except Exception as error:  # any import failure is the user's path or module
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ConfigError(
            "norm._target_", target, f"an importable class (package.module.Class): {reason}"
        ) from None


def _parameters(cls: type) -> list[inspect.Parameter]:
    """The constructor's parameters after ``num_features``."""
    return list(inspect.signature(cls).parameters.values())[1:]


def _check_keywords(cls: type, target: str, values: Mapping[str, Any]) -> None:
    parameters = _parameters(cls)
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return
    accepted = [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    for key, value in values.items():
        if key not in accepted:
            allowed = (
                f"a keyword of {target}: {', '.join(accepted)}"
                if accepted
                else (f"nothing: {target} takes no options")
            )
            raise ConfigError(f"norm.{key}", value, allowed)


def _signature_defaults(cls: type) -> dict[str, Any]:
    return {p.name: p.default for p in _parameters(cls) if p.default is not p.empty}
