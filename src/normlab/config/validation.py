"""Value checks of a composed config: ranges and combinations, turned into a
:class:`~normlab.errors.ConfigError` whose one-line message names the key, the value and what is
allowed. Nothing has been trained or written when it is raised.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from normlab import data as datasets
from normlab import models
from normlab.config.identity import lookup_lr_factor
from normlab.config.schema import (
    DEVICES,
    DISTRIBUTED_BACKENDS,
    EVAL_SPLITS,
    LR_SCALING,
    LR_SCHEDULES,
    OPTIMIZERS,
    PRECISIONS,
    PROGRESS,
    WANDB_MODES,
    ModelConfig,
    OptimConfig,
    RunConfig,
    config_node,
)
from normlab.errors import ConfigError, Shown
from normlab.norms import registry
from normlab.norms.options import RunFacts
from normlab.schedules import (
    CONVENTIONS,
    KINDS,
    UNITS,
    ScheduleConfig,
    build_schedule,
    check_schedule,
    schedule_kwargs,
)


def _one_of(key: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(key, value, f"one of {', '.join(allowed)}")


def _at_least(key: str, value: float | None, low: float, optional: bool = False) -> None:
    if value is None and optional:
        return
    if value is None or not value >= low:
        raise ConfigError(key, value, f"a number >= {low}")


def _in_range(key: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ConfigError(key, value, f"a number in [{low}, {high}]")


def validate(cfg: DictConfig | RunConfig, total_steps: int | None = None) -> RunConfig:
    """Check a composed config; return it as a typed :class:`RunConfig` object whose ``norm``
    is a :class:`~normlab.norms.registry.NormChoice`.

    Schedule windows are checked against the run length: ``steps`` when given, else
    ``total_steps`` (known once the data set's size is, for runs given in ``epochs``).
    """
    if isinstance(cfg, DictConfig):
        name = _norm_config_name(cfg)
        run: RunConfig = OmegaConf.to_object(_without_hydra(cfg))
        run.norm = registry.choose(run.norm, name)
        _name_outside_plugins(cfg, run)
    else:
        run = cfg
    _validate_top(run)
    _validate_data(run)
    _validate_model(run)
    _validate_norm(run)
    _validate_optim(run.optim)
    _validate_eval(run)
    _validate_distributed(run)
    _one_of("logger.wandb.mode", run.logger.wandb.mode, WANDB_MODES)
    _take_chosen_lr(run)
    total = run.steps if run.steps is not None else total_steps
    for scheduled in run.norm.schedules.values():
        node = config_node(run, scheduled.node)
        _validate_schedule(scheduled.node, node, total, scheduled.low, scheduled.high)
    return run


def _take_chosen_lr(run: RunConfig) -> None:
    """``optim.lr_choice`` resolved: the run trains with its cell's chosen factor, recorded as
    ``optim.lr_factor``, and the file's path leaves the config."""
    path = run.optim.lr_choice
    if path is None:
        return
    try:
        run.optim.lr_factor = lookup_lr_factor(path, run)
    except FileNotFoundError:
        raise ConfigError("optim.lr_choice", path, "an existing lr_choice.json") from None
    except KeyError:
        raise ConfigError(
            "optim.lr_choice", path, "a choice holding this run's cell: run its selection first"
        ) from None
    run.optim.lr_choice = None


def _norm_config_name(cfg: DictConfig) -> str | None:
    """The name the ``norm`` config was chosen by (``norm=NAME``): a mode given by ``_target_``
    takes it."""
    if HydraConfig.initialized():
        return HydraConfig.get().runtime.choices.get("norm")
    return OmegaConf.select(cfg, "hydra.runtime.choices.norm")


def _name_outside_plugins(cfg: DictConfig, run: RunConfig) -> None:
    """A data set or model from outside the package (``_target_``) is named after the config
    it was chosen by (``data=NAME``, ``model=NAME``), as a norm mode from outside is."""
    for group in ("data", "model"):
        node = getattr(run, group)
        if HydraConfig.initialized():
            chosen = HydraConfig.get().runtime.choices.get(group)
        else:
            chosen = OmegaConf.select(cfg, f"hydra.runtime.choices.{group}")
        if node._target_ is not None and chosen:
            node.name = chosen


def _without_hydra(cfg: DictConfig) -> DictConfig:
    """``cfg`` without the ``hydra`` node that ``compose(return_hydra_config=True)`` adds."""
    if "hydra" not in cfg:
        return cfg
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def _validate_top(run: RunConfig) -> None:
    _at_least("batch_size", run.batch_size, 1)
    _at_least("seed", run.seed, 0)
    _at_least("eval_every", run.eval_every, 1)
    _at_least("num_evals", run.num_evals, 1, optional=True)
    _at_least("threads", run.threads, 0)
    _at_least("pack_max_activations", run.pack_max_activations, 0)
    _one_of("device", run.device, DEVICES)
    _one_of("progress", run.progress, PROGRESS)
    _one_of("precision", run.precision, PRECISIONS)
    _at_least("trace.steps", run.trace.steps, 0)
    _at_least("checkpoint.every", run.checkpoint.every, 0)
    if (run.steps is None) == (run.epochs is None):
        raise ConfigError("steps", run.steps, "exactly one of steps and epochs must be set")
    _at_least("steps", run.steps, 1, optional=True)
    if run.epochs is not None and not run.epochs > 0:
        raise ConfigError("epochs", run.epochs, "a number > 0")
    if not run.sweep or "/" in run.sweep or run.sweep.startswith("."):
        raise ConfigError("sweep", run.sweep, "a non-empty directory name without '/'")


def _validate_norm(run: RunConfig) -> None:
    """The mode's own checks against the run, then, for a class from outside the package,
    that it builds for every width the model asks of it."""
    widths = hidden_widths(run)
    run.norm.check(RunFacts(run.batch_size, tuple(widths), run.model.name))
    if run.norm.target is None:
        return
    for width in sorted(set(widths)):
        try:
            with torch.device("meta"):
                run.norm.build(width)
        except Exception as error:  # whatever the user's class raises, in one line
            reason = (str(error).strip().splitlines() or [""])[-1]
            shown = Shown(f"{run.norm.mode} ({run.norm.target})")
            raise ConfigError(
                "norm",
                shown,
                f"it must build for {width} channels: {type(error).__name__}: {reason}",
            ) from None


def hidden_widths(run: RunConfig) -> list[int]:
    """The channels of every norm layer the run's model builds, in module order (a model
    built on the meta device with a recording norm factory: no memory, no layers)."""
    widths: list[int] = []

    def record(channels: int) -> nn.Module:
        widths.append(channels)
        return nn.Identity()

    data_set = run_data_set(run)
    with torch.device("meta"):
        build_checked_model(run, data_set.input_shape, data_set.num_classes, record)
    return widths


def run_data_set(run: RunConfig) -> datasets.DataSet:
    """The run's data set, registered or from outside (:func:`normlab.data.choose`)."""
    data = run.data
    return datasets.choose(
        data.name, data._target_, data.options, data.input_shape, data.num_classes
    )


def build_checked_model(
    run: RunConfig, input_shape: tuple[int, ...], num_classes: int, norm: Any
) -> nn.Module:
    """The run's model for inputs of ``input_shape``; a model that cannot take them is a
    :class:`ConfigError` on ``model``."""
    spec = run.model
    build = _model_builder(spec)
    # a registered model says what it cannot take with a ValueError; one from outside may raise
    # anything
    failures = ValueError if spec._target_ is None else Exception
    try:
        return build(tuple(input_shape), num_classes, norm)
    except failures as error:
        shown = Shown(f"{spec.name} on {run.data.name} inputs {tuple(input_shape)}")
        if spec._target_ is None:
            raise ConfigError("model", shown, str(error)) from None
        reason = (str(error).strip().splitlines() or [""])[-1]
        allowed = f"{spec._target_} must build: {type(error).__name__}: {reason}"
        raise ConfigError("model", shown, allowed) from None


def _validate_data(run: RunConfig) -> None:
    data = run.data
    data_set = run_data_set(run)
    if data._target_ is not None:
        for key, value in (("root", data.root), ("download", data.download)):
            if value is not None and value is not False:
                allowed = "unset: a data set with _target_ loads itself (keywords: data.options)"
                raise ConfigError(f"data.{key}", value, allowed)
    _one_of("data.sampler", data.sampler, datasets.SAMPLERS)
    _one_of("data.eval_split", data.eval_split, EVAL_SPLITS)
    if not 0 < data.validation_fraction < 1:
        raise ConfigError(
            "data.validation_fraction", data.validation_fraction, "a number in (0, 1)"
        )
    _at_least("data.train_size", data.train_size, 1, optional=True)
    _at_least("data.val_size", data.val_size, 1, optional=True)
    if data.sampler == "non_iid":
        _in_range("data.classes_per_batch", data.classes_per_batch, 1, data_set.num_classes)
        if data.classes_per_batch > run.batch_size:
            raise ConfigError(
                "data.classes_per_batch",
                data.classes_per_batch,
                f"at most batch_size={run.batch_size} classes in a batch",
            )


def _model_builder(spec: ModelConfig) -> Any:
    return models.choose(
        spec.name,
        spec._target_,
        spec.options,
        spec.depth,
        spec.width,
        spec.bias_before_norm,
        spec.centred_weights,
    )


def _validate_model(run: RunConfig) -> None:
    spec = run.model
    _model_builder(spec)
    _at_least("model.depth", spec.depth, 1, optional=True)
    _at_least("model.width", spec.width, 1, optional=True)
    if spec._target_ is None and spec.depth is not None:
        model = models.get(spec.name)
        if not model.allows_depth(spec.depth):
            raise ConfigError("model.depth", spec.depth, model.depths)


def _validate_optim(optim: OptimConfig) -> None:
    _one_of("optim.name", optim.name, OPTIMIZERS)
    if not (optim.lr > 0 and math.isfinite(optim.lr)):
        raise ConfigError("optim.lr", optim.lr, "a finite number > 0")
    if not (optim.lr_factor > 0 and math.isfinite(optim.lr_factor)):
        raise ConfigError("optim.lr_factor", optim.lr_factor, "a finite number > 0")
    _in_range("optim.momentum", optim.momentum, 0.0, 1.0)
    _at_least("optim.weight_decay", optim.weight_decay, 0.0)
    _in_range("optim.warmup", optim.warmup, 0.0, 1.0)
    _one_of("optim.schedule", optim.schedule, LR_SCHEDULES)
    if any(not 0 < m < 1 for m in optim.milestones) or optim.milestones != sorted(optim.milestones):
        raise ConfigError("optim.milestones", optim.milestones, "increasing fractions in (0, 1)")
    _in_range("optim.gamma", optim.gamma, 0.0, 1.0)
    _one_of("optim.lr_scaling", optim.lr_scaling, LR_SCALING)
    _at_least("optim.base_batch_size", optim.base_batch_size, 1)
    if optim.grad_clip is not None and not optim.grad_clip > 0:
        raise ConfigError("optim.grad_clip", optim.grad_clip, "null or a number > 0")


def _validate_distributed(run: RunConfig) -> None:
    spec = run.distributed
    _at_least("distributed.world_size", spec.world_size, 1)
    _one_of("distributed.backend", spec.backend, DISTRIBUTED_BACKENDS)
    if not (spec.timeout_s > 0 and math.isfinite(spec.timeout_s)):
        raise ConfigError("distributed.timeout_s", spec.timeout_s, "a finite number > 0")
    if run.batch_size % spec.world_size:
        allowed = f"a divisor of batch_size={run.batch_size} (each rank takes an equal slice)"
        raise ConfigError("distributed.world_size", spec.world_size, allowed)
    if spec.backend == "nccl" and run.device == "cpu":
        raise ConfigError("distributed.backend", spec.backend, "auto or gloo with device=cpu")


def _validate_eval(run: RunConfig) -> None:
    _at_least("eval.train_subset", run.eval.train_subset, 1)
    _at_least("eval.eval_batch_size", run.eval.eval_batch_size, 1)
    _at_least("eval.precise_batches", run.eval.precise_batches, 1)
    _at_least("eval.precise_examples", run.eval.precise_examples, 1, optional=True)
    div = run.divergence
    for key in ("loss_factor", "param_norm_factor", "activation_bound"):
        if not getattr(div, key) > 1:
            raise ConfigError(f"divergence.{key}", getattr(div, key), "a number > 1")
    _at_least("divergence.check_every", div.check_every, 1)


def _validate_schedule(
    key: str, sched: ScheduleConfig, total: int | None, low: float, high: float = math.inf
) -> None:
    _one_of(f"{key}.kind", sched.kind, KINDS)
    _one_of(f"{key}.unit", sched.unit, UNITS)
    _one_of(f"{key}.convention", sched.convention, CONVENTIONS)
    try:
        schedule = build_schedule(**schedule_kwargs(sched))
        if total is not None:
            check_schedule(schedule, total, key, low, high)
    except ValueError as error:
        reason = str(error).removeprefix(f"{key}: ")
        raise ConfigError(key, _schedule_summary(sched), reason) from None


def _schedule_summary(sched: ScheduleConfig) -> Shown:
    """``linear(start=0.5, end=0.99, finish=0.5)``: the kind and the fields set away from their
    defaults, so a message names what the user wrote rather than every field."""
    default = ScheduleConfig()
    changed = {k: v for k, v in vars(sched).items() if k != "kind" and v != getattr(default, k)}
    return Shown(f"{sched.kind}({', '.join(f'{k}={v}' for k, v in changed.items())})")
