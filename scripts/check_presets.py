"""Which runs of a preset's sweep grid have no record yet: what re-running it would train.

Composes every point of each preset's grid (``hydra.sweeper.params`` of
``conf/experiment/<preset>.yaml``, the cartesian product, as Hydra's basic sweeper expands it)
through the real configs, computes each run's id and looks for it under
``<results>/runs/<preset>/``. Trains nothing.

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

from normlab.config import register_configs, run_id, validate
from normlab.train import CONF_DIR


def grid(preset: str) -> tuple[list[str], list[list[str]]]:
    """The preset's sweep keys and, per key, its values."""
    cfg = _compose(preset, [])
    params = cfg.hydra.sweeper.params or {}
    return list(params), [str(v).split(",") for v in params.values()]


def points(preset: str) -> Iterator[list[str]]:
    keys, values = grid(preset)
    for combo in itertools.product(*values):
        yield [f"{k}={v}" for k, v in zip(keys, combo, strict=True)]


def missing_runs(preset: str, runs_dir: Path) -> list[str]:
    """The overrides of every grid point whose run id has no directory in ``runs_dir``."""
    sweep = runs_dir / preset
    recorded = {p.name for p in sweep.iterdir()} if sweep.exists() else set()
    missing = []
    for overrides in points(preset):
        if run_id(validate(_compose(preset, overrides))) not in recorded:
            missing.append(" ".join(overrides))
    return missing


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
        total = sum(1 for _ in points(preset))
        missing = missing_runs(preset, runs_dir)
        print(f"{preset}: {total - len(missing)}/{total} grid points recorded")
        for overrides in missing[:10]:
            print(f"  would train: {overrides}")
        status |= bool(missing)
    return status


if __name__ == "__main__":
    sys.exit(main())
