"""Read run records under ``results/`` into pandas, without wandb and without retraining.

What a record holds is :mod:`normlab.records`. Runs whose summary never reached a final status
(killed, or still running elsewhere) are kept with ``status = "incomplete"`` and a warning, so a
sweep in progress or a crashed job is visible rather than silently missing. Imports neither
torch nor Hydra.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from normlab.files import RunLock
from normlab.quantities import DECLARED
from normlab.records import (
    FINAL_STATUSES,
    METRICS_FILE,
    RUN_COLUMNS,
    SUMMARY_FILE,
    TRACE_FILE,
    flatten,
    read_config,
    read_summary,
)


def find_runs(*roots: str | Path) -> list[Path]:
    """Every run directory under ``roots`` (a root may itself be a run directory)."""
    found: set[Path] = set()
    for root in map(Path, roots):
        if not root.exists():
            warnings.warn(f"results path {root} does not exist", stacklevel=2)
            continue
        for name in (METRICS_FILE, SUMMARY_FILE):  # a config.yaml alone may be Hydra's own
            found.update(p.parent for p in root.rglob(name) if "wandb" not in p.parts)
    return sorted(found)


def run_status(run_dir: Path, summary: Mapping[str, Any]) -> str:
    """``summary.status`` when final; ``running`` when a live job holds the run; else
    ``incomplete`` (killed, or never wrote its summary)."""
    status = summary.get("status")
    if status in FINAL_STATUSES:
        return status
    lock = RunLock(run_dir)
    if lock.path.exists() and not lock.is_stale():
        return "running"
    return "incomplete"


def _run_row(run_dir: Path) -> dict[str, Any]:
    summary = read_summary(run_dir)
    row: dict[str, Any] = {f"config.{k}": v for k, v in flatten(read_config(run_dir)).items()}
    row.update({k: v for k, v in summary.items() if not isinstance(v, Mapping)})
    if isinstance(summary.get(DECLARED), list):  # JSON text: a column of hashable cells
        row[DECLARED] = json.dumps(summary[DECLARED])
    for group in ("final", "best"):
        row.update(summary.get(group, {}))
    row.update(flatten(summary.get("versions") or {}, "versions."))
    per_layer = summary.get("values_per_channel")
    if isinstance(per_layer, Mapping) and per_layer and "values_per_channel_min" not in summary:
        row["values_per_channel_min"] = min(per_layer.values())
    # where the record is now, not where it was written: results move between machines
    row.update(
        run_dir=str(run_dir),
        run_id=run_dir.name,
        sweep=run_dir.parent.name,
        status=run_status(run_dir, summary),
    )
    return row


def load_runs(*roots: str | Path) -> pd.DataFrame:
    """One row per run: status, final and best metrics, timing, the quantities its mode
    declares (JSON text, read by :func:`normlab.quantities.declared`), and the config as
    ``config.<dotted key>`` columns."""
    rows = [legacy_fields(_run_row(d)) for d in find_runs(*roots)]
    frame = pd.DataFrame(rows)
    _warn_incomplete(frame)
    return frame


def legacy_fields(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with ``norm_label`` and ``statistics_batch_size`` where its record lacks them (a
    mode from outside recorded before they were): the mode's name and the batch size.
    ``scripts/migrate_records.py`` gives older built-in records what the registry says."""
    mode, batch_size = row.get("config.norm.mode"), row.get("config.batch_size")
    if mode is not None:
        row.setdefault("norm_label", mode)
    if batch_size is not None:
        row.setdefault("statistics_batch_size", batch_size)
    return row


def load_traces(runs: pd.DataFrame) -> pd.DataFrame:
    """Every row of the ``trace.csv`` of the runs in ``runs`` (those that traced), with their
    ``run_dir``: per-step ``loss``, ``param_norm``, ``prenorm_bias_norm``, ``prenorm_mean_rms``
    for the first and the last traced steps."""
    frames = []
    for run_dir in runs.get("run_dir", pd.Series(dtype=object)):
        path = Path(run_dir) / TRACE_FILE
        if not path.exists() or path.stat().st_size == 0:
            continue
        frames.append(pd.read_csv(path).assign(run_dir=run_dir))
    if not frames:
        return pd.DataFrame(columns=["run_dir", "step"])
    return pd.concat(frames, ignore_index=True)


def _warn_incomplete(frame: pd.DataFrame) -> None:
    if frame.empty:
        return
    incomplete = frame.loc[frame["status"] == "incomplete", "run_dir"].tolist()
    if incomplete:
        listed = ", ".join(incomplete[:5]) + (" ..." if len(incomplete) > 5 else "")
        warnings.warn(
            f"{len(incomplete)} incomplete run(s) (killed or unfinished): {listed}", stacklevel=3
        )


def load_metrics(
    *roots: str | Path, runs: pd.DataFrame | None = None, config_keys: Iterable[str] = ()
) -> pd.DataFrame:
    """All logged rows of all runs, tidy: one row per (run, step), with the run's id columns
    and any extra ``config.*`` columns asked for."""
    runs = load_runs(*roots) if runs is None else runs
    keys = [c for c in (*RUN_COLUMNS, *config_keys) if c in runs.columns]
    frames = []
    for _, run in runs.iterrows():
        path = Path(run["run_dir"]) / METRICS_FILE
        if not path.exists() or path.stat().st_size == 0:
            continue
        metrics = pd.read_csv(path)
        for key in keys:
            metrics[key] = run[key]
        frames.append(metrics)
    if not frames:
        return pd.DataFrame(columns=["step", *keys])
    return pd.concat(frames, ignore_index=True)
