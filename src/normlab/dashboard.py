"""The figures and tables of ``normlab-plot``/``normlab-claims`` in a wandb dashboard.

Each ``--wandb`` invocation logs one summary run in the sweep's group (the sweeps joined by
``+`` when the results span several), job type ``summary-plots`` or ``summary-claims``: every
PNG figure as an image under ``figures/``, every table as a wandb Table under ``tables/``
(the text the Markdown tables show). Like every normlab run it is offline unless
``WANDB_MODE`` says otherwise, and its files go under the results tree the records lie in
(``<results>/wandb/offline-run-*``, as :class:`normlab.loggers.WandbBackend` writes them);
``wandb sync`` uploads it later.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

DEFAULT_PROJECT = "normlab"


def results_root(runs: pd.DataFrame, fallback: Path) -> Path:
    """The results tree of the records (``<root>/runs/<sweep>/<run id>``), else ``fallback``."""
    for run_dir in runs.get("run_dir", pd.Series(dtype=object)):
        path = Path(run_dir)
        if path.parent.parent.name == "runs":
            return path.parents[2]
    return Path(fallback)


def group_of(runs: pd.DataFrame) -> str:
    sweeps = sorted(set(runs.get("sweep", pd.Series(dtype=object)).dropna().astype(str)))
    return "+".join(sweeps) or "summary"


def project_of(runs: pd.DataFrame) -> str:
    projects = runs.get("config.logger.wandb.project", pd.Series(dtype=object)).dropna()
    return str(projects.iloc[0]) if projects.nunique() == 1 else DEFAULT_PROJECT


def log_summary(
    runs: pd.DataFrame,
    kind: str,
    figures: Sequence[Path],
    tables: Mapping[str, pd.DataFrame],
    fallback: Path,
) -> Path:
    """Log ``figures`` (their PNGs) and ``tables`` to a new summary run; returns the run's
    local directory (``.../wandb/offline-run-*`` offline)."""
    import wandb  # imported here: plotting without --wandb never pays for the import

    # with the argument alone, wandb still probes the network once
    mode = os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    root = results_root(runs, fallback)
    root.mkdir(parents=True, exist_ok=True)
    group = group_of(runs)
    run = wandb.init(
        project=project_of(runs),
        dir=str(root),
        mode=mode,
        group=group,
        job_type=f"summary-{kind}",
        name=f"summary-{kind} ({group})",
        tags=["summary", kind],
        config={"runs": len(runs), "sweeps": group.split("+")},
        reinit="create_new",
    )
    try:
        payload = {
            f"figures/{path.stem}": wandb.Image(str(path))
            for path in figures
            if path.suffix == ".png"
        }
        for name, table in tables.items():
            payload[f"tables/{name}"] = wandb.Table(dataframe=table.astype(str))
        run.log(payload)
        local = Path(run.dir).parent
    finally:
        run.finish()
        # the wandb-core service outlives finish(); one process must not leak it
        wandb.teardown()
    return local
