"""Rewrite run records of id version 1 to the current run id and per-mode ``config.yaml``.

Version 1 records (before ``normlab.norms``) carry every option of every mode in their
``config.yaml`` (``norm.groups`` on a ``batch`` run, renorm's rmax/dmax schedules on every
run), and their id hashed all of it. This script reads each such record's config, keeps what
its mode uses, computes the current id (:func:`normlab.config.run_id`), renames the run
directory to it and rewrites ``config.yaml``; in ``summary.json`` it updates ``run_id`` and
``run_dir`` and adds the fields the current trainer writes where the mode is built
(``norm_label``, ``statistics_batch_size``), noting the old id in ``migrated_from``.
``metrics.csv`` is never touched. Records already at the current version are left alone, so
running it twice changes nothing.

    python scripts/migrate_run_ids.py results/runs            # rewrite in place
    python scripts/migrate_run_ids.py results/runs --dry-run  # only list what would change
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from normlab.config.identity import ID_VERSION, record_config, run_id
from normlab.config.schema import RunConfig
from normlab.config.validation import validate
from normlab.files import atomic_write_text
from normlab.norms import registry
from normlab.norms.options import option_names
from normlab.records import CONFIG_FILE, SUMMARY_FILE


def current_config(old: dict[str, Any], total_steps: int | None) -> RunConfig:
    """The validated config a version-1 record describes."""
    old = dict(old)
    norm = dict(old.pop("norm"))
    mode = norm["mode"]
    kept = {k: norm[k] for k in option_names(registry.get(mode).options) if k in norm}
    merged = OmegaConf.merge(OmegaConf.structured(RunConfig), {**old, "norm": {}})
    run: RunConfig = OmegaConf.to_object(merged)
    run.norm = registry.choose({"mode": mode, **kept})
    return validate(run, total_steps)


def migrate(run_dir: Path, dry_run: bool) -> Path | None:
    """The record's new directory, or None when it needs no change."""
    summary_path = run_dir / SUMMARY_FILE
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    if f"-v{ID_VERSION}-" in run_dir.name:
        return None
    old = yaml.safe_load((run_dir / CONFIG_FILE).read_text())
    run = current_config(old, summary.get("total_steps"))
    target = run_dir.with_name(run_id(run))
    if target.exists():
        raise SystemExit(f"{run_dir}: its new id {target.name} is taken; nothing changed")
    if dry_run:
        return target
    atomic_write_text(run_dir / CONFIG_FILE, OmegaConf.to_yaml(record_config(run)))
    if summary:
        summary.update(
            run_id=target.name,
            run_dir=str(target),
            migrated_from=run_dir.name,
            **run.norm.record(run.batch_size),
        )
        atomic_write_text(summary_path, json.dumps(summary, indent=2, sort_keys=True) + "\n")
    run_dir.rename(target)
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="+", type=Path, help="results/runs or sweep directories")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args()
    moved = 0
    for root in args.roots:
        for config in sorted(root.rglob(CONFIG_FILE)):
            target = migrate(config.parent, args.dry_run)
            if target is not None:
                moved += 1
                print(f"{config.parent} -> {target.name}")
    print(f"{'would migrate' if args.dry_run else 'migrated'} {moved} run(s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
