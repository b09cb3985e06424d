"""Which runs of a preset's sweep grid have no record yet: what re-running it would train.

Composes every point of each preset's grid (``hydra.sweeper.params`` of
``conf/experiment/<preset>.yaml``, the cartesian product, as Hydra's basic sweeper expands it)
through the real configs, computes each run's id and looks for it under
``<results>/runs/<sweep>/``. A study preset (a ``study`` node, seeds not in its grid) is
checked stage by stage as ``normlab-study`` runs it: the learning-rate selection (grid ×
``study.lr_factors`` × ``study.select_seeds`` on the validation split, under
``<sweep>_select/``), then the final runs (grid × ``study.seeds`` at the chosen factors of
``<sweep>_select/lr_choice.json``), ``<sweep>`` being the preset's ``sweep`` (its name, unless
it adds cells to another study). Trains nothing.

    python scripts/check_presets.py                       # every preset with committed records
    python scripts/check_presets.py blowup seed_question  # these presets
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Iterator
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from normlab.config.identity import run_id
from normlab.config.schema import register_configs
from normlab.config.validation import validate
from normlab.train import CONF_DIR


def grid(preset: str) -> tuple[list[str], list[list[str]]]:
    """The preset's sweep keys and, per key, its values."""
    cfg = _compose(preset, [])
    params = cfg.hydra.sweeper.params or {}
    return list(params), [str(v).split(",") for v in params.values()]


def stages(preset: str, runs_dir: Path) -> list[tuple[str, list[str], dict[str, list[str]]]]:
    """(sweep, fixed overrides, extra swept keys) of each stage re-running the preset trains."""
    cfg = _compose(preset, [])
    study, sweep = cfg.get("study"), cfg.sweep
    if not study or not study.get("seeds") or "seed" in grid(preset)[0]:
        return [(sweep, [], {})]  # a plain sweep (its grid names the seeds): normlab-train -m
    select = f"{sweep}_select"
    return [
        (
            select,
            [f"sweep={select}", "data.eval_split=validation"],
            {
                "optim.lr_factor": [str(f) for f in study.lr_factors],
                "seed": [str(s) for s in study.select_seeds],
            },
        ),
        (
            sweep,
            [f"sweep={sweep}", f"optim.lr_choice={runs_dir / select / 'lr_choice.json'}"],
            {"seed": [str(s) for s in study.seeds]},
        ),
    ]


def points(preset: str, extra: dict[str, list[str]] | None = None) -> Iterator[list[str]]:
    keys, values = grid(preset)
    keys, values = [*keys, *(extra or {})], [*values, *(extra or {}).values()]
    for combo in itertools.product(*values):
        yield [f"{k}={v}" for k, v in zip(keys, combo, strict=True)]


def missing_runs(
    preset: str, runs_dir: Path, sweep: str, fixed: list[str], extra: dict[str, list[str]]
) -> tuple[int, list[str]]:
    """How many runs the stage has, and the overrides of those with no directory in ``sweep``."""
    sweep_dir = runs_dir / sweep
    recorded = {p.name for p in sweep_dir.iterdir()} if sweep_dir.exists() else set()
    total, missing = 0, []
    for overrides in points(preset, extra):
        total += 1
        try:
            rid = run_id(validate(_compose(preset, [*fixed, *overrides])))
        except Exception as error:  # a final stage whose choice file is missing or lacks the cell
            rid = f"unresolved: {error}"
        if rid not in recorded:
            missing.append(" ".join(overrides))
    return total, missing


def _compose(preset: str, overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        overrides = [f"+experiment={preset}", *overrides]
        return compose("config", overrides=overrides, return_hydra_config=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("presets", nargs="*")
    parser.add_argument("--results", type=Path, default=Path("results"))
    args = parser.parse_args()
    register_configs()
    runs_dir = args.results / "runs"
    presets = args.presets or sorted(
        p.stem for p in (CONF_DIR / "experiment").glob("*.yaml") if (runs_dir / p.stem).is_dir()
    )
    status = 0
    for preset in presets:
        for sweep, fixed, extra in stages(preset, runs_dir):
            total, missing = missing_runs(preset, runs_dir, sweep, fixed, extra)
            print(f"{sweep}: {total - len(missing)}/{total} runs recorded")
            for overrides in missing[:10]:
                print(f"  would train: {overrides}")
            status |= bool(missing)
    return status


if __name__ == "__main__":
    sys.exit(main())
