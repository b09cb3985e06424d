"""Normalization layers compared by normlab: one module per mode, each registering itself.

``build_norm(mode, num_features, **options)`` builds a registered mode's layer; the registry
(:mod:`normlab.norms.registry`) is where the mode list, option checks, run labels and tags
come from; the built-in modes' colours and markers are :mod:`normlab.labels`'. Every
batch-dependent layer subclasses :class:`~normlab.norms.base.RunningStatsNorm` (affine, running
statistics, scheduled attributes, diagnostics, precise-BN); the batch-independent baselines are
plain modules.

A new mode is one module here that defines its layer and options and calls
:func:`~normlab.norms.registry.register` (imported below), plus ``conf/norm/NAME.yaml``; or, from
outside the package, a class of the user's own and a YAML with ``_target_`` (see the README).

References: Ioffe & Szegedy 2015 (arXiv 1502.03167); Ioffe 2017, Batch Renormalization
(arXiv 1702.03275); Chiley et al. 2019, Online Normalization (arXiv 1905.05894); Wu & He 2018,
Group Normalization (arXiv 1803.08494); Yan et al. 2020, Moving Average Batch Normalization
(arXiv 2001.06838); Hoffer et al. 2017, ghost batch norm (arXiv 1705.08741).
"""

from __future__ import annotations

from torch import nn

# the built-in modes, each registered by importing its module (figures and tables list their
# labels in normlab.labels' order)
from normlab.norms import batch

# isort: split
from normlab.norms import moving_average

# isort: split
from normlab.norms import renorm

# isort: split
from normlab.norms import online

# isort: split
from normlab.norms import mabn

# isort: split
from normlab.norms import baselines, registry
from normlab.norms.base import (
    RunningStatsNorm,
    Scheduled,
    is_batch_dependent,
    is_batch_independent,
    norm_layers,
)
from normlab.norms.baselines import GroupNorm, Identity, LayerNorm
from normlab.norms.batch import BatchNorm
from normlab.norms.diagnostics import NormDiagnostics
from normlab.norms.mabn import MovingAverageBatchNorm
from normlab.norms.moving_average import MovingAverageNorm
from normlab.norms.online import OnlineNorm, linear_scan
from normlab.norms.options import parse
from normlab.norms.renorm import BatchRenorm
from normlab.norms.stats import (
    batch_stats,
    normalize_with_batch_stats,
    normalize_with_constant_stats,
    values_per_channel,
)

BUILT_IN = (batch, moving_average, renorm, online, mabn, baselines)
MODES = registry.names()

__all__ = [
    "BUILT_IN",
    "MODES",
    "BatchNorm",
    "BatchRenorm",
    "GroupNorm",
    "Identity",
    "LayerNorm",
    "MovingAverageBatchNorm",
    "MovingAverageNorm",
    "NormDiagnostics",
    "OnlineNorm",
    "RunningStatsNorm",
    "Scheduled",
    "batch_stats",
    "build_norm",
    "is_batch_dependent",
    "is_batch_independent",
    "linear_scan",
    "norm_layers",
    "normalize_with_batch_stats",
    "normalize_with_constant_stats",
    "values_per_channel",
]


def build_norm(mode: str, num_features: int, **options: object) -> nn.Module:
    """The layer of registered ``mode`` over ``num_features`` channels.

    ``options`` are the mode's options (its options dataclass) and, for direct use without a
    trainer, initial values of the attributes it schedules (``momentum``, ``rmax``...). Unknown
    modes, unknown options and bad values raise ``ValueError`` naming the argument.
    """
    spec = registry.get(mode)
    schedules = getattr(spec.layer, "schedules", {})
    initial = {k: options.pop(k) for k in list(options) if k in schedules}
    parsed = parse(spec.options, options, prefix=mode)
    choice = registry.NormChoice(mode, parsed, None, spec.layer)
    return spec.layer(num_features, **choice.keywords(), **initial)
