"""Structured config schemas (registered in Hydra's ConfigStore), their value checks, and a
run's identity.

The dataclasses give every key its type, so a wrong type or an unknown key fails while Hydra
composes the config. The ``norm`` node is the exception: its keys are those of the chosen mode,
checked against that mode's options (:mod:`normlab.norms.registry`). :func:`validate` checks
ranges and combinations, and turns the first problem into a :class:`ConfigError` whose
one-line message names the key, the value and what is allowed; nothing has been trained or
written when it is raised.

:func:`record_config` is what a run trains, as written to its ``config.yaml``: the mode's own
options and only the schedule nodes its layers follow. :func:`run_id` hashes the part of it that
differs from the defaults, so adding an option whose default keeps today's behaviour changes no
existing id.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import MISSING, DictConfig, OmegaConf, open_dict
from torch import nn

from normlab.data import DATASETS, INPUT_SHAPES, NUM_CLASSES, SAMPLERS
from normlab.errors import ConfigError, Shown
from normlab.models import MODELS, build_model
from normlab.norms import registry
from normlab.norms.base import RunningStatsNorm
from normlab.norms.options import RunFacts
from normlab.schedules import CONVENTIONS, KINDS, UNITS, build_schedule, check_schedule

OPTIMIZERS = ("sgd", "adamw")
LR_SCHEDULES = ("constant", "cosine", "step")
LR_SCALING = ("none", "linear", "sqrt")
DEVICES = ("auto", "cpu", "cuda")
PROGRESS = ("auto", "on", "off")
PRECISIONS = ("float32", "bfloat16")
EVAL_SPLITS = ("test", "validation")
WANDB_MODES = ("offline", "online", "disabled")


@dataclass
class ScheduleConfig:
    """A value over training steps; see :mod:`normlab.schedules` for the kinds."""

    kind: str = "constant"
    value: float | None = None
    start: float | None = None
    end: float | None = None
    begin: float = 0.0
    finish: float = 1.0
    unit: str = "fraction"
    knots: list[list[float]] | None = None
    floor: float = 0.0
    convention: str = "momentum"


@dataclass
class RenormConfig:
    rmax: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(value=3.0))
    dmax: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(value=5.0))


@dataclass
class DataConfig:
    name: str = "mnist1d"
    root: str | None = None
    download: bool = False
    sampler: str = "iid"
    classes_per_batch: int = 2
    drop_last: bool = True
    train_size: int | None = None
    val_size: int | None = None
    # test: evaluate on the held-out test split (what studies report); validation: carve
    # validation_fraction of the training examples out (a fixed split) and evaluate on those,
    # for choosing hyperparameters without looking at the test set
    eval_split: str = "test"
    validation_fraction: float = 0.125


@dataclass
class ModelConfig:
    name: str = "cnn1d"
    depth: int | None = None
    width: int | None = None
    bias_before_norm: bool = False


@dataclass
class OptimConfig:
    name: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    warmup: float = 0.0
    schedule: str = "cosine"
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])
    gamma: float = 0.1
    lr_scaling: str = "none"
    base_batch_size: int = 32
    grad_clip: float | None = None
    # times the scaled rate: the grid a study chooses from on a validation split
    lr_factor: float = 1.0
    # a study's lr_choice.json: the run takes the factor chosen for its cell (normlab.study)
    lr_choice: str | None = None


@dataclass
class StudyConfig:
    """What ``normlab-study`` runs for a preset (see :mod:`normlab.study`)."""

    lr_factors: list[float] = field(default_factory=lambda: [1.0])
    select_seeds: list[int] = field(default_factory=lambda: [0])
    seeds: list[int] = field(default_factory=lambda: [0])


@dataclass
class EvalConfig:
    train_subset: int = 1000
    eval_batch_size: int = 1000
    precise_bn: bool = False
    precise_batches: int = 50
    # instead of precise_batches: enough batches of the run's size for this many examples
    precise_examples: int | None = None
    precise_last_only: bool = False  # recompute only at the run's last row (its cost once)


@dataclass
class TraceConfig:
    # > 0: keep per-step loss, parameter norm, pre-norm bias norm and mean for the first and the
    # last `steps` steps on the device, written to trace.csv when the run ends
    steps: int = 0


@dataclass
class DivergenceConfig:
    loss_factor: float = 10.0
    param_norm_factor: float = 100.0
    activation_bound: float = 1e4
    check_every: int = 10


@dataclass
class WandbConfig:
    enabled: bool = False
    project: str = "normlab"
    entity: str | None = None
    mode: str = "offline"
    log_figures: bool = True


@dataclass
class LoggerConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class PathsConfig:
    results: str = "results"
    runs: str = "${paths.results}/runs"
    logs: str = "${paths.results}/logs"
    wandb: str = "${paths.results}"
    cache: str = ".cache/normlab"
    data: str = "data"


@dataclass
class CheckpointConfig:
    every: int = 1
    keep_final: bool = False


@dataclass
class RunConfig:
    # the chosen mode's own keys (conf/norm/NAME.yaml); a NormChoice once validated
    norm: Any = MISSING
    momentum: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(value=0.1))
    renorm: RenormConfig = field(default_factory=RenormConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    divergence: DivergenceConfig = field(default_factory=DivergenceConfig)
    trace: TraceConfig = field(default_factory=TraceConfig)
    study: StudyConfig = field(default_factory=StudyConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    batch_size: int = 32
    seed: int = 0
    steps: int | None = 1000
    epochs: float | None = None
    eval_every: int = 100
    num_evals: int | None = None
    device: str = "auto"
    precision: str = "float32"  # bfloat16: autocast; norm statistics stay in float32
    threads: int = 0
    deterministic: bool = True
    progress: str = "auto"
    resume: bool = True
    overwrite: bool = False
    sweep: str = MISSING
    tags: list[str] = field(default_factory=list)


def register_configs() -> None:
    """The run schema, and each registered mode's option schema as ``schema/norm/NAME``, which
    ``conf/norm/NAME.yaml`` extends."""
    store = ConfigStore.instance()
    store.store(name="normlab_schema", node=RunConfig)
    for name in registry.names():
        store.store(group="schema/norm", name=name, node=registry.get(name).schema())


# ----------------------------------------------------------------------------- validation


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
    else:
        run = cfg
    _validate_top(run)
    _validate_data(run)
    _validate_model(run)
    _validate_norm(run)
    _validate_optim(run.optim)
    _validate_eval(run)
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
    from normlab import study

    try:
        run.optim.lr_factor = study.lookup(path, run)
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


def _without_hydra(cfg: DictConfig) -> DictConfig:
    """``cfg`` without the ``hydra`` node that ``compose(return_hydra_config=True)`` adds."""
    if "hydra" not in cfg:
        return cfg
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def config_node(run: RunConfig, path: str) -> Any:
    """The config node at a dotted ``path`` (``renorm.rmax``)."""
    node: Any = run
    for part in path.split("."):
        node = node[part] if isinstance(node, Mapping) else getattr(node, part)
    return node


def _validate_top(run: RunConfig) -> None:
    _at_least("batch_size", run.batch_size, 1)
    _at_least("seed", run.seed, 0)
    _at_least("eval_every", run.eval_every, 1)
    _at_least("num_evals", run.num_evals, 1, optional=True)
    _at_least("threads", run.threads, 0)
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

    with torch.device("meta"):
        build_checked_model(run, INPUT_SHAPES[run.data.name], NUM_CLASSES[run.data.name], record)
    return widths


def build_checked_model(
    run: RunConfig, input_shape: tuple[int, ...], num_classes: int, norm: Any
) -> nn.Module:
    """The run's model for inputs of ``input_shape``; a model that cannot take them is a
    :class:`ConfigError` on ``model``."""
    try:
        return build_model(
            run.model.name,
            input_shape,
            num_classes,
            norm,
            depth=run.model.depth,
            width=run.model.width,
            bias_before_norm=run.model.bias_before_norm,
        )
    except ValueError as error:
        shown = Shown(f"{run.model.name} on {run.data.name} inputs {tuple(input_shape)}")
        raise ConfigError("model", shown, str(error)) from None


def _validate_data(run: RunConfig) -> None:
    data = run.data
    _one_of("data.name", data.name, DATASETS)
    _one_of("data.sampler", data.sampler, SAMPLERS)
    _one_of("data.eval_split", data.eval_split, EVAL_SPLITS)
    if not 0 < data.validation_fraction < 1:
        raise ConfigError(
            "data.validation_fraction", data.validation_fraction, "a number in (0, 1)"
        )
    _at_least("data.train_size", data.train_size, 1, optional=True)
    _at_least("data.val_size", data.val_size, 1, optional=True)
    if data.sampler == "non_iid":
        _in_range("data.classes_per_batch", data.classes_per_batch, 1, NUM_CLASSES[data.name])
        if data.classes_per_batch > run.batch_size:
            raise ConfigError(
                "data.classes_per_batch",
                data.classes_per_batch,
                f"at most batch_size={run.batch_size} classes in a batch",
            )


def _validate_model(run: RunConfig) -> None:
    _one_of("model.name", run.model.name, MODELS)
    _at_least("model.depth", run.model.depth, 1, optional=True)
    _at_least("model.width", run.model.width, 1, optional=True)
    depth = run.model.depth
    if run.model.name == "resnet20" and depth is not None and ((depth - 2) % 6 or depth < 8):
        raise ConfigError("model.depth", depth, "6n+2 for resnet (8, 14, 20, 32, ...)")


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


def schedule_kwargs(sched: ScheduleConfig) -> dict[str, Any]:
    return {k: v for k, v in vars(sched).items() if v is not None}


# Keys that say where and how a run is recorded, not what is trained: they stay out of its id.
RECORD_KEYS = (
    "paths",
    "logger",
    "device",
    "threads",
    "progress",
    "resume",
    "overwrite",
    "sweep",
    "tags",
    "checkpoint",
    "trace",
    "study",
)
# Bump when what the id hashes changes meaning; ids carry it, so records of another version
# are told apart (scripts/migrate_run_ids.py rewrites them).
ID_VERSION = 2


def record_config(run: RunConfig) -> dict[str, Any]:
    """What the run trains and how it is recorded, as its ``config.yaml`` holds it: the
    ``norm`` node of its mode only, and of the schedule nodes the registered modes follow
    (``momentum``, ``renorm.rmax``...) only those its layers follow."""
    config = asdict(run)
    config["norm"] = run.norm.config()
    used = {s.node for s in run.norm.schedules.values()}
    for node in _schedule_nodes() - used:
        _drop(config, node.split("."))
    return config


def _schedule_nodes() -> set[str]:
    nodes = {s.node for s in RunningStatsNorm.schedules.values()}
    for name in registry.names():
        layer = registry.get(name).layer
        nodes.update(s.node for s in getattr(layer, "schedules", {}).values())
    return nodes


def _drop(config: dict[str, Any], path: list[str]) -> None:
    """Remove ``path`` and every mapping it leaves empty."""
    head, *rest = path
    if head not in config:
        return
    if rest and isinstance(config[head], dict):
        _drop(config[head], rest)
        if config[head]:
            return
    del config[head]


def run_id(run: RunConfig) -> str:
    """A readable, stable id: the same training config and seed always give the same id, so a
    re-run sweep finds (and skips or resumes) its earlier runs.

    The digest covers what the run trains (:func:`record_config` without :data:`RECORD_KEYS`)
    where it differs from the defaults of the same mode: options or config keys added later
    with a default that keeps the old behaviour leave every existing id as it was.
    """
    digest = training_digest(run)[:8]
    return f"{run.norm.mode}-bs{run.batch_size}-s{run.seed}-v{ID_VERSION}-{digest}"


def training_digest(run: RunConfig, leave_out: tuple[str, ...] = (), named: bool = False) -> str:
    """A digest of what ``run`` trains where it differs from its mode's defaults, without the
    dotted keys ``leave_out`` (a study's cell leaves out the seed and the learning-rate factor
    it chooses); ``named`` puts the mode's name in too (a run id carries it in its prefix)."""
    semantic = _semantic(record_config(run))
    for key in leave_out:
        _drop(semantic, key.split("."))
    defaults = _semantic(record_config(_defaults_for(run)))
    changed = {"id_version": ID_VERSION, **_changed(semantic, defaults)}
    if named:
        changed["mode"] = run.norm.mode
    return hashlib.sha1(json.dumps(changed, sort_keys=True).encode()).hexdigest()


def from_record(config: Mapping[str, Any]) -> RunConfig:
    """The run config a record's ``config.yaml`` holds (current version)."""
    values = dict(config)
    norm = dict(values.pop("norm"))
    run: RunConfig = OmegaConf.to_object(
        OmegaConf.merge(OmegaConf.structured(RunConfig), {**values, "norm": {}})
    )
    run.norm = registry.choose(norm)
    return run


def _semantic(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in RECORD_KEYS}


def _defaults_for(run: RunConfig) -> RunConfig:
    default = _default_like(run)
    default.norm = run.norm.default()
    return default


def _default_like(config: Any) -> Any:
    """A config of ``config``'s own dataclass types holding their defaults: a node whose class
    gained a field compares that field against the field's own default."""
    default = type(config)()
    for spec in dataclasses.fields(config):
        value, fallback = getattr(config, spec.name), getattr(default, spec.name)
        if dataclasses.is_dataclass(fallback) and type(value) is not type(fallback):
            setattr(default, spec.name, _default_like(value))
    return default


def _changed(config: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """The leaves of ``config`` that ``defaults`` lacks or holds at another value."""
    out = {}
    for key, value in config.items():
        default = defaults.get(key, _ABSENT) if isinstance(defaults, Mapping) else _ABSENT
        if isinstance(value, Mapping) and isinstance(default, Mapping):
            nested = _changed(value, default)
            if nested:
                out[key] = nested
        elif value != default or type(value) is not type(default):
            out[key] = copy.deepcopy(value)
    return out


_ABSENT = object()
