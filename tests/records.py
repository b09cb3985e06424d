"""Run records written by hand in the trainer's format, for the plot, claims and dashboard
tests: ``config.yaml``, ``metrics.csv``, ``summary.json`` and, when given, ``trace.csv``."""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

# the options each mode's config node holds in the new record format (only what the mode uses)
RUNNING_STATS = {"batch", "moving_average", "renorm"}


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def write_record(
    root: Path,
    sweep: str,
    run_id: str,
    config: Mapping[str, Any],
    summary: Mapping[str, Any] | None,
    rows: Sequence[Mapping[str, Any]],
    trace: Sequence[Mapping[str, Any]] = (),
) -> Path:
    """``root/runs/<sweep>/<run_id>/`` with the given files; ``summary=None`` writes none (a
    run killed before finishing)."""
    run_dir = root / "runs" / sweep / run_id
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(dict(config), sort_keys=False))
    write_csv(run_dir / "metrics.csv", rows)
    if trace:
        write_csv(run_dir / "trace.csv", trace)
    if summary is not None:
        full = {"run_id": run_id, "sweep": sweep, "run_dir": str(run_dir), **summary}
        (run_dir / "summary.json").write_text(json.dumps(full, indent=2, sort_keys=True) + "\n")
    return run_dir


def norm_node(mode: str, virtual_batch_size: int | None = None, **options: Any) -> dict:
    node: dict[str, Any] = {"mode": mode, "eps": 1e-5}
    if mode == "batch":
        node["virtual_batch_size"] = virtual_batch_size
    if mode == "moving_average":
        node.update(update="before", grad_through_batch=False)
    node.update(options)
    return node


def migration_script():
    """``scripts/migrate_records.py`` as a module (scripts/ is no package)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "migrate_records.py"
    spec = importlib.util.spec_from_file_location("migrate_records", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
