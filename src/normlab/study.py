"""``normlab-study NAME``: one command for a full study, with its learning rates chosen fairly.

A study is a preset (``conf/experiment/NAME.yaml``) whose ``study`` node names the grid of
learning-rate factors, the seeds used to choose among them and the seeds of the reported runs:

1. **select**: every cell of the preset's grid (mode, batch size, architecture...) trains once
   per factor and selection seed with ``optim.lr_factor`` times its scaled rate, evaluated on a
   validation split carved from the training data (``data.eval_split=validation``); sweep
   ``SWEEP_select``, where ``SWEEP`` is the preset's ``sweep`` (its name, unless it adds cells
   to another study's records: ``seed_proposal_mlp`` grows ``seed_question_mlp``).
2. **choose**: per cell, the factor with the best mean final validation accuracy over the
   selection seeds (a diverged run counts as 0; ties go to the factor nearest 1, then the
   larger), written to
   ``results/runs/SWEEP_select/lr_choice.json`` with every score (of every cell there).
3. **final**: every cell trains with its chosen factor and all the study's seeds, evaluated on
   the held-out test set; sweep ``SWEEP``. Each run looks its factor up
   (``optim.lr_choice``) and records it as ``optim.lr_factor``. Final runs left from an earlier
   choice (the grid grew, a selection run was redone) are moved to ``SWEEP_superseded`` first,
   so that figures and claims see one factor per cell.
4. figures and the claims table from the final runs' records.

Every stage resumes: finished runs are skipped, so a stopped study picks up where it was.
Extra arguments go to every ``normlab-train`` call (a launcher, ``paths.results``...).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from normlab.config.identity import cell_id, from_record
from normlab.files import atomic_write_text
from normlab.records import CHOICE_FILE, CONFIG_FILE, read_config
from normlab.results import load_runs


def choose(select_runs: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per cell: the chosen factor and every factor's mean score over its selection seeds.

    ``select_runs``: dicts with ``run`` (its :class:`~normlab.config.schema.RunConfig`),
    ``status`` and ``accuracy`` (final validation accuracy)."""
    scores: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    labels: dict[str, str] = {}
    for run in select_runs:
        if run["status"] not in ("completed", "diverged"):
            continue
        cell = cell_id(run["run"])
        factor = float(run["run"].optim.lr_factor)
        accuracy = run.get("accuracy")
        ok = run["status"] == "completed" and accuracy is not None and math.isfinite(accuracy)
        scores[cell][factor].append(accuracy if ok else 0.0)
        labels[cell] = _describe(run["run"])
    out = {}
    for cell, by_factor in scores.items():
        means = {f: sum(v) / len(v) for f, v in by_factor.items()}
        best = max(means.values())
        # ties: the factor nearest 1, then the larger (not the order the records were read in)
        chosen = min(
            (f for f, m in means.items() if m == best), key=lambda f: (abs(math.log(f)), -f)
        )
        out[cell] = {
            "lr_factor": chosen,
            "scores": {str(f): means[f] for f in sorted(means)},
            "seeds": {str(f): len(by_factor[f]) for f in sorted(by_factor)},
            "cell": labels[cell],
        }
    return out


def read_select_runs(sweep_dir: Path) -> list[dict[str, Any]]:
    """The selection sweep's runs: their configs, statuses and final validation accuracies."""
    runs = load_runs(sweep_dir)
    out = []
    for _, row in runs.iterrows():
        config = read_config(Path(row["run_dir"]))
        accuracy = row.get("val_acc_eval")
        finite = accuracy is not None and accuracy == accuracy
        out.append(
            {
                "run": from_record(config),
                "status": row["status"],
                "accuracy": float(accuracy) if finite else None,
            }
        )
    return out


def write_choice(select_dir: Path) -> Path:
    choice = choose(read_select_runs(select_dir))
    path = select_dir / CHOICE_FILE
    atomic_write_text(path, json.dumps(choice, indent=2, sort_keys=True) + "\n")
    return path


def move_superseded(final_dir: Path, choice: dict[str, dict[str, Any]]) -> list[Path]:
    """Move the final runs whose factor is not their cell's chosen one out of ``final_dir``,
    into ``<final_dir>_superseded``; return where they went."""
    import shutil

    moved = []
    for config in sorted(final_dir.glob(f"*/{CONFIG_FILE}")) if final_dir.exists() else []:
        run = from_record(read_config(config.parent))
        chosen = choice.get(cell_id(run), {}).get("lr_factor")
        if chosen is not None and run.optim.lr_factor != chosen:
            target = final_dir.with_name(f"{final_dir.name}_superseded") / config.parent.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(target, ignore_errors=True)
            shutil.move(str(config.parent), str(target))
            moved.append(target)
    return moved


def _describe(run: Any) -> str:
    return f"{run.norm.label()} bs{run.batch_size} {run.model.name} {run.data.name}"


# ----------------------------------------------------------------------------- the command


def _train(preset: str, overrides: Sequence[str]) -> None:
    command = [sys.executable, "-m", "normlab.train", "-m", f"+experiment={preset}", *overrides]
    print("normlab-study:", " ".join(command[2:]), file=sys.stderr, flush=True)
    subprocess.run(command, check=True)


def _study_node(preset: str, overrides: Sequence[str]) -> dict[str, Any]:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from normlab.config.schema import register_configs
    from normlab.train import CONF_DIR

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"+experiment={preset}", *overrides])
    return {
        "study": OmegaConf.to_container(cfg.study, resolve=True),
        "sweep": cfg.sweep,
        "runs": cfg.paths.runs,
        "results": cfg.paths.results,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="normlab-study", description=__doc__.splitlines()[0])
    parser.add_argument("preset", help="a preset with a study node (conf/experiment/NAME.yaml)")
    parser.add_argument("overrides", nargs="*", help="passed to every normlab-train call")
    parser.add_argument("--skip-figures", action="store_true")
    args = parser.parse_args(argv)
    node = _study_node(args.preset, args.overrides)
    study = node["study"]
    if not study.get("seeds"):
        print(f"normlab-study: {args.preset} has no study.seeds", file=sys.stderr)
        return 2
    sweep = node["sweep"]
    select = f"{sweep}_select"
    factors = ",".join(str(f) for f in study["lr_factors"])
    select_seeds = ",".join(map(str, study["select_seeds"]))
    seeds = ",".join(map(str, study["seeds"]))
    _train(
        args.preset,
        [
            f"sweep={select}",
            "data.eval_split=validation",
            f"optim.lr_factor={factors}",
            f"seed={select_seeds}",
            *args.overrides,
        ],
    )
    choice = write_choice(Path(node["runs"]) / select)
    print(f"normlab-study: learning rates chosen: {choice}", file=sys.stderr)
    moved = move_superseded(Path(node["runs"]) / sweep, json.loads(choice.read_text()))
    if moved:
        print(
            f"normlab-study: moved {len(moved)} run(s) of an earlier choice to {moved[0].parent}",
            file=sys.stderr,
        )
    _train(
        args.preset,
        [f"sweep={sweep}", f"optim.lr_choice={choice}", f"seed={seeds}", *args.overrides],
    )
    if not args.skip_figures:
        from normlab.plots import main as plot

        runs = Path(node["runs"]) / sweep
        plot([str(runs), "--out", str(Path(node["results"]) / "figures" / sweep)])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
