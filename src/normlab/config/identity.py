"""A run's identity: what its record's ``config.yaml`` holds (:func:`record_config`), its id
(:func:`run_id`), its directory, the cell it belongs to (:func:`cell_id`) and the learning-rate
factor a study chose for that cell.

:func:`run_id` hashes the part of the record that differs from the defaults, so adding an option
whose default keeps today's behaviour changes no existing id. What a run trains decides its id,
never where its files lie (:data:`~normlab.records.RECORD_KEYS`,
:data:`~normlab.records.MACHINE_KEYS`).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from normlab.config.schema import RunConfig
from normlab.labels import centred_label
from normlab.norms import registry
from normlab.norms.base import RunningStatsNorm
from normlab.records import MACHINE_KEYS, NOT_CELL_KEYS, RECORD_KEYS

# Bump when what the id hashes changes meaning; ids carry it, so records of another version
# are told apart (scripts/migrate_records.py rewrites them). 3: renorm's schedules are its own
# options, machine paths left the record.
ID_VERSION = 3


def record_config(run: RunConfig) -> dict[str, Any]:
    """What the run trains and how it is recorded, as its ``config.yaml`` holds it: the
    ``norm`` node of its mode only, of the schedule nodes the registered modes follow
    (``momentum``, ``renorm.rmax``...) only those its layers follow, and no machine paths."""
    config = asdict(run)
    config["norm"] = run.norm.config()
    used = {s.node for s in run.norm.schedules.values()}
    for node in (_schedule_nodes() - used) | set(MACHINE_KEYS):
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
    semantic = copy.deepcopy({k: v for k, v in config.items() if k not in RECORD_KEYS})
    for key in RECORD_KEYS:
        if "." in key:
            _drop(semantic, key.split("."))
    return semantic


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


def norm_record(run: RunConfig) -> dict[str, Any]:
    """The mode's fields for ``summary.json`` (:meth:`NormChoice.record`), its ``norm_label``
    naming the centred weights where the model has them, so such runs are drawn apart."""
    fields = run.norm.record(run.batch_size)
    if run.model.centred_weights:
        fields["norm_label"] = centred_label(fields["norm_label"])
    return fields


def run_directory(run: RunConfig) -> Path:
    """Where the run's record lies: ``<paths.runs>/<sweep>/<run id>``."""
    return Path(run.paths.runs) / run.sweep / run_id(run)


def cell_id(run: Any) -> str:
    """The cell a run belongs to: what it trains (:func:`training_digest`) less
    :data:`~normlab.records.NOT_CELL_KEYS`. A selection run and a final run of the same cell
    share it."""
    return training_digest(run, NOT_CELL_KEYS, named=True)[:12]


def lookup_lr_factor(path: str | Path, run: Any) -> float:
    """The learning-rate factor a study's choice file holds for ``run``'s cell; KeyError if it
    has none."""
    choice = json.loads(Path(path).read_text())
    return float(choice[cell_id(run)]["lr_factor"])
