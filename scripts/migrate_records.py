"""Rewrite run records of an older id version to the current one (config, id, summary, choices).

What each version change means for a record:

- version 1 (before ``normlab.norms``): ``config.yaml`` holds every option of every mode; only
  the run's own mode's options are kept.
- version 2: renorm's rmax/dmax schedules lie in a top-level ``renorm`` node; they move into
  the mode's own options (``norm.rmax``/``norm.dmax``). Records held machine paths
  (``paths``, ``data.root``) that entered the id; they leave the record and the id.
- every version: ``summary.json`` gains what the current trainer writes where the mode is built
  (``norm_label``, ``statistics_batch_size``, the quantities the mode declares,
  ``norm_quantities``) and ``param_norm_growth_step`` of a run stopped at the old
  parameter-norm limit.

Each record's directory is renamed to its current id, ``config.yaml`` rewritten, and
``summary.json``'s ``run_id`` and ``run_dir`` updated with the old id in ``migrated_from``;
``metrics.csv`` is never touched. A study's ``lr_choice.json`` is keyed by cell ids, which
carry the version: it is recomputed from its migrated selection runs, and the script checks
that every cell keeps the factor it had. A record already at the current version keeps its
id and files; its ``summary.json`` only gains the fields of its registered mode's record it
lacks (a mode from outside the package declares none). Running it twice changes nothing.

    python scripts/migrate_records.py results/runs            # rewrite in place
    python scripts/migrate_records.py results/runs --dry-run  # only list what would change
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from normlab import study
from normlab.config.identity import ID_VERSION, record_config, run_id
from normlab.config.schema import RunConfig
from normlab.config.validation import validate
from normlab.files import atomic_write_text
from normlab.norms import registry
from normlab.norms.options import option_names
from normlab.records import CHOICE_FILE, CONFIG_FILE, read_config, read_summary, write_summary

# Old records stopped a run at a parameter-norm limit with this signal; it is growth, not blow-up.
LEGACY_GROWTH_SIGNAL = "param_norm"
# what a version-2 record held that the current schema does not
DROPPED = ("paths",)


def current_config(old: dict[str, Any], total_steps: int | None) -> RunConfig:
    """The validated config an older record describes."""
    old = {k: v for k, v in old.items() if k not in DROPPED}
    norm = dict(old.pop("norm"))
    schedules = old.pop("renorm", None) or {}
    mode = norm["mode"]
    kept = {k: norm[k] for k in option_names(registry.get(mode).options) if k in norm}
    for name in registry.own_schedules(registry.get(mode).layer):
        if name in schedules and name not in kept:
            kept[name] = _without_unread_value(schedules[name])
    data = {k: v for k, v in old.get("data", {}).items() if k not in ("root", "download")}
    merged = OmegaConf.merge(OmegaConf.structured(RunConfig), {**old, "data": data, "norm": {}})
    run: RunConfig = OmegaConf.to_object(merged)
    run.norm = registry.choose({"mode": mode, **kept})
    return validate(run, total_steps)


def _without_unread_value(schedule: dict[str, Any]) -> dict[str, Any]:
    """A version-2 ``renorm`` schedule as the mode's option: version 2's schema gave every
    rmax/dmax node a ``value`` (3 and 5) that only a constant schedule reads; the option's
    default has none, so a piecewise schedule drops it rather than count it in the id."""
    if schedule.get("kind", "constant") == "constant":
        return dict(schedule)
    return {**schedule, "value": None}


def migrate(run_dir: Path, dry_run: bool) -> Path | None:
    """The record's new directory, or None when it needs no change."""
    if f"-v{ID_VERSION}-" in run_dir.name:
        return None
    summary = read_summary(run_dir)
    run = current_config(read_config(run_dir), summary.get("total_steps"))
    target = run_dir.with_name(run_id(run))
    if target.exists():
        raise SystemExit(f"{run_dir}: its new id {target.name} is taken; nothing changed")
    if dry_run:
        return target
    atomic_write_text(run_dir / CONFIG_FILE, OmegaConf.to_yaml(record_config(run)))
    if summary:
        write_summary(run_dir, _current_summary(summary, run, run_dir, target))
    run_dir.rename(target)
    return target


def complete(run_dir: Path, dry_run: bool) -> list[str]:
    """The fields of its mode's record (:meth:`NormChoice.record`) that a current-version
    record's ``summary.json`` lacks, added unless ``dry_run``."""
    summary, config = read_summary(run_dir), read_config(run_dir)
    if (
        not summary
        or "_target_" in config["norm"]
        or config["norm"]["mode"] not in registry.names()
    ):
        return []
    fields = _own_norm(config["norm"]).record(config["batch_size"])
    if summary.get("divergence_signal") == LEGACY_GROWTH_SIGNAL:
        fields["param_norm_growth_step"] = summary.get("divergence_step")
    missing = {k: v for k, v in fields.items() if k not in summary}
    if missing and not dry_run:
        write_summary(run_dir, {**summary, **missing})
    return sorted(missing)


def _own_norm(node: dict[str, Any]) -> registry.NormChoice:
    """The registered mode of a ``norm`` node, of whatever version: a version-1 node holds every
    option of every mode, of which the mode's own are kept."""
    mode = node["mode"]
    own = option_names(registry.get(mode).options)
    return registry.choose({"mode": mode, **{k: v for k, v in node.items() if k in own}})


def _current_summary(
    summary: dict[str, Any], run: RunConfig, old_dir: Path, target: Path
) -> dict[str, Any]:
    summary = {**summary, **run.norm.record(run.batch_size)}
    if summary.get("divergence_signal") == LEGACY_GROWTH_SIGNAL:
        summary.setdefault("param_norm_growth_step", summary.get("divergence_step"))
    moved = summary.get("run_dir", str(old_dir)).removesuffix(old_dir.name) + target.name
    summary.update(run_id=target.name, run_dir=moved, migrated_from=old_dir.name)
    return summary


def rechoose(select_dir: Path) -> None:
    """Recompute a study's choice from its migrated selection runs; the factors must not move."""
    path = select_dir / CHOICE_FILE
    before = _choices(path)
    study.write_choice(select_dir)
    if _choices(path) != before:
        raise SystemExit(f"{path}: the recomputed choice differs from the one it replaces")


def _choices(path: Path) -> list[tuple[str, float, str]]:
    choice = json.loads(path.read_text()).values()
    return sorted((c["cell"], c["lr_factor"], json.dumps(c["scores"])) for c in choice)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="+", type=Path, help="results/runs or sweep directories")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args()
    moved = completed = 0
    for root in args.roots:
        for config in sorted(root.rglob(CONFIG_FILE)):
            target = migrate(config.parent, args.dry_run)
            if target is not None:
                moved += 1
                print(f"{config.parent} -> {target.name}")
                continue
            added = complete(config.parent, args.dry_run)
            if added:
                completed += 1
                print(f"{config.parent}: + {', '.join(added)}")
        if moved and not args.dry_run:
            for choice in sorted(root.rglob(CHOICE_FILE)):
                rechoose(choice.parent)
    done = "would" if args.dry_run else "did"
    print(f"{done} migrate {moved} run(s), complete {completed} summaries", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
