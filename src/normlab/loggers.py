"""Where a run's measurements go: its own record on disk (always) and optional backends.

The record of a run is one directory: ``config.yaml`` (resolved config), ``metrics.csv`` (one
row per logged step, appended and flushed as it is produced) and ``summary.json`` (status and
final numbers, replaced atomically). Backends such as wandb receive the same rows; a backend
that fails is switched off with one message and the record notes it, the run goes on.
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

from normlab.config import config_node, record_config
from normlab.files import atomic_write_text

log = logging.getLogger(__name__)

CONFIG_FILE, METRICS_FILE, SUMMARY_FILE = "config.yaml", "metrics.csv", "summary.json"
TRACE_FILE = "trace.csv"  # per-step rows of runs with trace.steps > 0


class Backend(Protocol):
    """What the trainer calls; every method may raise, the fan-out contains it."""

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
    """The run's directory and its three files, plus the backends that mirror the metrics."""

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
        summary = {**summary, "backend_errors": dict(self.backend_errors)}
        text = json.dumps(_json_safe(summary), indent=2, sort_keys=True) + "\n"
        atomic_write_text(self.run_dir / SUMMARY_FILE, text)

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


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / SUMMARY_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


class WandbBackend:
    """Mirror a run to Weights & Biases: offline by default, so no network or account is needed
    (``wandb sync <paths.wandb>/wandb/offline-run-*`` uploads later).

    Runs of one sweep share a ``group`` (the sweep name); ``job_type`` is the normalization
    mode; tags carry mode, batch size and schedules; the name reads ``renorm-bs4-s0``. ``step``
    (optimizer steps) is the x-axis of every metric; summaries keep the best accuracy and the
    lowest loss, plus the run's status and divergence step.
    """

    name = "wandb"
    MAXIMIZE = ("val_acc_eval", "val_acc_train_mode", "train_subset_acc_eval", "val_acc_precise")
    MINIMIZE = ("loss", "val_loss")

    def __init__(self, config: Any, run_dir: Path) -> None:
        import wandb  # imported here: runs without wandb never pay for the import

        settings = config.logger.wandb
        # with the argument alone, wandb still probes the network once
        os.environ["WANDB_MODE"] = settings.mode
        os.environ.setdefault("WANDB_SILENT", "true")
        wandb_dir = Path(config.paths.wandb)
        wandb_dir.mkdir(parents=True, exist_ok=True)
        self.wandb = wandb
        self.run = wandb.init(
            project=settings.project,
            entity=settings.entity,
            mode=settings.mode,
            dir=str(wandb_dir),
            group=config.sweep,
            job_type=config.norm.mode,
            name=run_label(config),
            tags=run_tags(config),
            config=_plain_config(config),
            notes=str(run_dir),
            reinit="create_new",
        )
        self.log_figures = settings.log_figures
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")
        for key in self.MAXIMIZE:
            self.run.define_metric(key, step_metric="step", summary="max,last")
        for key in self.MINIMIZE:
            self.run.define_metric(key, step_metric="step", summary="min,last")

    def log(self, row: Mapping[str, Any], step: int) -> None:
        self.run.log({**row, "step": step})

    def finish(self, summary: Mapping[str, Any], figures: list[Path]) -> None:
        try:
            keep = (
                "status",
                "divergence_step",
                "divergence_signal",
                "steps",
                "samples_per_s",
                "run_dir",
                "error",
            )
            self.run.summary.update({k: summary[k] for k in keep if k in summary})
            if self.log_figures and figures:
                self.run.log({f"figures/{p.stem}": self.wandb.Image(str(p)) for p in figures})
        finally:
            failed = summary.get("status") == "failed"
            self.run.finish(exit_code=1 if failed else 0)
            # the wandb-core service outlives finish(); a sweep in one process must not leak it
            self.wandb.teardown()


def run_label(config: Any) -> str:
    return f"{config.norm.mode}-bs{config.batch_size}-s{config.seed}"


def run_tags(config: Any) -> list[str]:
    """Mode, batch size, model, data, the kind of every schedule the mode's layers follow
    (``momentum:constant``, ``rmax:piecewise``), the mode's own tags, the sampler if not iid,
    and the config's ``tags``."""
    tags = [
        config.norm.mode,
        f"bs{config.batch_size}",
        f"model:{config.model.name}",
        f"data:{config.data.name}",
    ]
    for attribute, scheduled in config.norm.schedules.items():
        tags.append(f"{attribute}:{config_node(config, scheduled.node).kind}")
    tags += config.norm.tags()
    if config.data.sampler != "iid":
        tags.append(f"sampler:{config.data.sampler}")
    return [*tags, *config.tags]


def _plain_config(config: Any) -> dict[str, Any]:
    return record_config(config)
