"""What a run record is: its files, its statuses, the keys that make a run, a cell and a setting,
and the helpers that write and read it. Training writes through this module; ``results``,
``plots``, ``claims`` and ``study`` read through it. It imports neither torch nor Hydra.

A run record is one directory ``<paths.runs>/<sweep>/<run id>/`` holding

- ``config.yaml``: what the run trains and how it is recorded (no machine paths);
- ``metrics.csv``: one row per logged step, appended and flushed as it is produced;
- ``summary.json``: status, final numbers and provenance, replaced atomically;
- ``trace.csv``: per-step rows of runs that trace their first and last steps;
- ``checkpoint.pt``: while a run is unfinished, what it needs to resume.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import yaml

from normlab.files import atomic_write_text

log = logging.getLogger(__name__)

CONFIG_FILE, METRICS_FILE, SUMMARY_FILE = "config.yaml", "metrics.csv", "summary.json"
TRACE_FILE = "trace.csv"
CHECKPOINT_FILE = "checkpoint.pt"
CHOICE_FILE = "lr_choice.json"  # a study's learning-rate choice, in its selection sweep

FINAL_STATUSES = ("completed", "diverged", "interrupted", "failed")
# a run finished with these is skipped when its sweep is run again, and used by figures and claims
FINISHED = ("completed", "diverged")

# ----------------------------------------------------------------------------- what a run is

# Config keys that say where and how a run is recorded, not what it trains: they stay out of its
# id, its cell and its setting.
RECORD_KEYS = (
    "paths",
    "logger",
    "device",
    "threads",
    "pack",
    "pack_max_activations",
    "progress",
    "resume",
    "overwrite",
    "sweep",
    "tags",
    "checkpoint",
    "trace",
    "study",
    "distributed.backend",
    "distributed.timeout_s",
)
# Dotted keys that say where files lie on one machine, not what they hold: never recorded, so a
# record reads the same wherever it was made and its id never depends on a directory.
MACHINE_KEYS = ("paths", "data.root", "data.download")
# The columns that name one run among the records.
RUN_COLUMNS = ("run_id", "sweep", "status", "config.norm.mode", "config.batch_size", "config.seed")

# What a cell's runs differ in besides what the cell is: the seed, the learning-rate factor a
# study chooses, and where it is evaluated.
NOT_CELL_KEYS = ("seed", "optim.lr_factor", "optim.lr_choice", "data.eval_split")

# A setting: where runs are compared. Besides the mode and the batch size, these record columns
# split runs when the compared records vary them, under the label beside each.
SETTING_KEYS = {
    "config.data.name": "data",
    "config.model.name": "model",
    "config.model.depth": "depth",
    "config.model.width": "width",
    "config.model.bias_before_norm": "bias before norm",
    "config.data.sampler": "sampler",
    "config.optim.name": "optimizer",
    "config.optim.lr": "lr",
    "config.momentum.kind": "momentum",
    "config.steps": "steps",
    "config.epochs": "epochs",
    "eval_split": "split",
    "statistics_sub_batch": "stats batch",  # set only where statistics come from sub-batches
}
# Record columns that are never a setting: where and how a run was recorded, and what names the
# run itself (its mode, batch size and seed are grouped on their own).
NOT_SETTING_PREFIXES = (
    *(f"config.{key}." for key in RECORD_KEYS),
    *(f"config.{key}" for key in RECORD_KEYS),
    "config.seed",
    "config.norm.mode",
    "config.norm._target_",
    "config.batch_size",
)


# ----------------------------------------------------------------------------- writing


class Backend(Protocol):
    """A mirror of the record (wandb): every method may raise, :class:`RunRecord` contains it."""

    name: str

    def log(self, row: Mapping[str, Any], step: int) -> None: ...

    def finish(self, summary: Mapping[str, Any], figures: list[Path]) -> None: ...


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return str(value)


class MetricsCSV:
    """``metrics.csv``: the header grows (by an atomic rewrite) when a row brings new columns."""

    def __init__(self, path: Path, keep_until_step: int | None = None) -> None:
        self.path = path
        self.columns: list[str] = []
        self.rows_written = 0
        if path.exists():
            self._reopen(keep_until_step)

    def _reopen(self, keep_until_step: int | None) -> None:
        with self.path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            self.columns = list(reader.fieldnames or [])
            rows = [
                r
                for r in reader
                if keep_until_step is not None
                and r.get("step")
                and int(float(r["step"])) <= keep_until_step
            ]
        self._rewrite(rows)

    def _rewrite(self, rows: list[Mapping[str, Any]]) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, self.columns, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c, "") for c in self.columns})
        atomic_write_text(self.path, buffer.getvalue())
        self.rows_written = len(rows)

    def append(self, row: Mapping[str, Any]) -> None:
        new = [k for k in row if k not in self.columns]
        if new or not self.path.exists():
            old_rows = self.read_rows() if self.path.exists() else []
            self.columns += new
            self._rewrite(old_rows)
        with self.path.open("a", newline="") as handle:
            csv.writer(handle, lineterminator="\n").writerow(
                [_cell(row.get(c)) for c in self.columns]
            )
            handle.flush()
            os.fsync(handle.fileno())
        self.rows_written += 1

    def read_rows(self) -> list[dict[str, str]]:
        with self.path.open(newline="") as handle:
            return list(csv.DictReader(handle))


class RunRecord:
    """The run's directory and its files, plus the backends that mirror the metrics."""

    def __init__(self, run_dir: Path, backends: list[Backend] | None = None) -> None:
        self.run_dir = run_dir
        self.backends = list(backends or [])
        self.backend_errors: dict[str, str] = {}
        self.metrics: MetricsCSV | None = None

    def open(self, config_yaml: str, keep_until_step: int | None = None) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.run_dir / CONFIG_FILE, config_yaml)
        self.metrics = MetricsCSV(self.run_dir / METRICS_FILE, keep_until_step)

    def add_backend(self, backend: Backend) -> None:
        self.backends.append(backend)

    def log(self, row: Mapping[str, Any], step: int) -> None:
        self.metrics.append({"step": step, **row})
        self._fan_out("log", row, step)

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        write_summary(self.run_dir, {**summary, "backend_errors": dict(self.backend_errors)})

    def write_trace(self, rows: list[Mapping[str, Any]]) -> None:
        """``trace.csv``, written once when the run ends (nothing when there are no rows)."""
        if not rows:
            return
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: _cell(v) for k, v in row.items()} for row in rows)
        atomic_write_text(self.run_dir / TRACE_FILE, buffer.getvalue())

    def finish(self, summary: Mapping[str, Any], figures: list[Path] | None = None) -> None:
        self._fan_out("finish", summary, figures or [])
        self.write_summary(summary)

    def backend_failed(self, name: str, error: BaseException) -> None:
        message = f"{type(error).__name__}: {error}"
        log.error("logger backend %s failed and is switched off for this run: %s", name, message)
        self.backend_errors[name] = message

    def _fan_out(self, method: str, *args: Any) -> None:
        for backend in list(self.backends):
            try:
                getattr(backend, method)(*args)
            except Exception as error:  # a dashboard must never cost the measurement
                self.backends.remove(backend)
                self.backend_failed(backend.name, error)


def write_summary(run_dir: Path, summary: Mapping[str, Any]) -> None:
    text = json.dumps(json_safe(summary), indent=2, sort_keys=True) + "\n"
    atomic_write_text(Path(run_dir) / SUMMARY_FILE, text)


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats as strings (``"nan"``), which JSON cannot hold."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


# ----------------------------------------------------------------------------- reading


def read_summary(run_dir: Path) -> dict[str, Any]:
    """The run's ``summary.json``; empty when it is missing or unreadable (a killed run)."""
    try:
        return json.loads((Path(run_dir) / SUMMARY_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


# libyaml's safe loader where PyYAML was built with it: reading a study's configs is most of the
# time of loading its records with the pure-Python one
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_config(run_dir: Path) -> dict[str, Any]:
    """The run's ``config.yaml`` as a nested dict; empty when it is missing."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.exists():
        return {}
    return yaml.load(path.read_text(), Loader=SAFE_LOADER) or {}


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys; lists as JSON text (one cell of a table)."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, list):
            out[name] = json.dumps(value)
        else:
            out[name] = value
    return out
