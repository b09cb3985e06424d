"""Read run records under ``results/`` into pandas, without wandb and without retraining.

A run record is a directory holding ``config.yaml``, ``metrics.csv`` and ``summary.json`` (see
:mod:`normlab.loggers`). Runs whose summary never reached a final status (killed, or still
running elsewhere) are kept with ``status = "incomplete"`` and a warning, so a sweep in progress
or a crashed job is visible rather than silently missing.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from normlab.files import RunLock
from normlab.loggers import CONFIG_FILE, METRICS_FILE, SUMMARY_FILE

FINAL_STATUSES = ("completed", "diverged", "interrupted", "failed")


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


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
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


def read_config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / CONFIG_FILE
    if not path.exists():
        return {}
    return flatten(yaml.safe_load(path.read_text()) or {})


def read_summary(run_dir: Path) -> dict[str, Any]:
    path = run_dir / SUMMARY_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


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
    row: dict[str, Any] = {f"config.{k}": v for k, v in read_config(run_dir).items()}
    row.update({k: v for k, v in summary.items() if not isinstance(v, Mapping)})
    for group in ("final", "best"):
        row.update(summary.get(group, {}))
    # where the record is now, not where it was written: results move between machines
    row.update(
        run_dir=str(run_dir),
        run_id=run_dir.name,
        sweep=run_dir.parent.name,
        status=run_status(run_dir, summary),
    )
    return row


def load_runs(*roots: str | Path) -> pd.DataFrame:
    """One row per run: status, final and best metrics, timing, and the config as
    ``config.<dotted key>`` columns."""
    rows = [_run_row(d) for d in find_runs(*roots)]
    frame = pd.DataFrame(rows)
    _warn_incomplete(frame)
    return frame


def _warn_incomplete(frame: pd.DataFrame) -> None:
    if frame.empty:
        return
    incomplete = frame.loc[frame["status"] == "incomplete", "run_dir"].tolist()
    if incomplete:
        listed = ", ".join(incomplete[:5]) + (" ..." if len(incomplete) > 5 else "")
        warnings.warn(
            f"{len(incomplete)} incomplete run(s) (killed or unfinished): {listed}", stacklevel=3
        )


ID_COLUMNS = ("run_id", "sweep", "status", "config.norm.mode", "config.batch_size", "config.seed")


def load_metrics(
    *roots: str | Path, runs: pd.DataFrame | None = None, config_keys: Iterable[str] = ()
) -> pd.DataFrame:
    """All logged rows of all runs, tidy: one row per (run, step), with the run's id columns
    and any extra ``config.*`` columns asked for."""
    runs = load_runs(*roots) if runs is None else runs
    keys = [c for c in (*ID_COLUMNS, *config_keys) if c in runs.columns]
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
