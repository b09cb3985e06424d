"""The run's config schema: one typed dataclass per config group, registered in Hydra's
ConfigStore so that a wrong type or an unknown key fails while Hydra composes the config.

The ``norm`` node is the exception: its keys are those of the chosen mode, checked against that
mode's options (:mod:`normlab.norms.registry`), whose schema is stored as ``schema/norm/NAME``.
Ranges and combinations are checked by :mod:`normlab.config.validation`; what a run's record and
id hold is :mod:`normlab.config.identity`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from normlab.norms import registry
from normlab.schedules import ScheduleConfig

OPTIMIZERS = ("sgd", "adamw")
LR_SCHEDULES = ("constant", "cosine", "step")
LR_SCALING = ("none", "linear", "sqrt")
DEVICES = ("auto", "cpu", "cuda")
PROGRESS = ("auto", "on", "off")
PRECISIONS = ("float32", "bfloat16")
EVAL_SPLITS = ("test", "validation")
WANDB_MODES = ("offline", "online", "disabled")
DISTRIBUTED_BACKENDS = ("auto", "gloo", "nccl")


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
    # a data set from outside the package (conf/data/NAME.yaml, see normlab.data.registry):
    # the function called with `options`, and what it returns declared, for the checks and the
    # model built before any data is read
    _target_: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    input_shape: list[int] | None = None
    num_classes: int | None = None


@dataclass
class ModelConfig:
    name: str = "cnn1d"
    depth: int | None = None
    width: int | None = None
    bias_before_norm: bool = False
    # every layer before a norm computes with its weight centred per output unit (Yan et al.
    # 2020, MABN's CenConv2d)
    centred_weights: bool = False
    # a model from outside the package (conf/model/NAME.yaml, see normlab.models.registry):
    # the class built as Class(input_shape, num_classes, norm, **options)
    _target_: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


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
class DistributedConfig:
    """A data-parallel run (:mod:`normlab.distributed`): ``world_size`` ranks, each training
    on its contiguous slice of every global batch of ``batch_size``. The world size is part of
    what a run trains (per-device statistics are over ``batch_size / world_size`` examples), so
    a run id holds it when it is not 1; the backend and the timeout are how, not what."""

    world_size: int = 1
    backend: str = "auto"  # auto: nccl on CUDA, gloo on CPU
    timeout_s: float = 300.0  # a collective waiting longer fails the run (gloo's own: 30 min)


@dataclass
class RunConfig:
    # the chosen mode's own keys (conf/norm/NAME.yaml); a NormChoice once validated
    norm: Any = MISSING
    momentum: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(value=0.1))
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
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    batch_size: int = 32
    seed: int = 0
    steps: int | None = 1000
    epochs: float | None = None
    eval_every: int = 100
    num_evals: int | None = None
    device: str = "auto"
    precision: str = "float32"  # bfloat16: autocast; norm statistics stay in float32
    threads: int = 0
    pack: bool = True  # a sweep trains a cell's seeds in one packed model (normlab.packing)
    # on CPU, cells whose one seed's forward holds more activations train one seed per process
    # (normlab.packing.oversized_reason); 0: no limit
    pack_max_activations: int = 2_000_000
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


def config_node(run: RunConfig, path: str) -> Any:
    """The config node at a dotted ``path``: ``momentum``, or a mode's own ``norm.rmax``."""
    node: Any = run
    for part in path.split("."):
        if isinstance(node, registry.NormChoice):
            node = node.options
        node = node[part] if isinstance(node, Mapping) else getattr(node, part)
    return node
