"""Backends that mirror a run's record (:mod:`normlab.records`): wandb. They receive the same
rows as ``metrics.csv``; a backend that fails is switched off with one message and the record
notes it, the run goes on.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from normlab.config.identity import record_config
from normlab.config.schema import config_node
from normlab.provenance import provenance


class WandbBackend:
    """Mirror a run to Weights & Biases: offline by default, so no network or account is needed
    (``wandb sync <paths.wandb>/wandb/offline-run-*`` uploads later).

    Runs of one sweep share a ``group`` (the sweep name); ``job_type`` is the normalization
    mode; tags carry mode, batch size and schedules; the name reads ``renorm-bs4-s0``. ``step``
    (optimizer steps) is the x-axis of every metric; summaries keep the best accuracy and the
    lowest loss, plus the run's status and divergence step.
    """

    name = "wandb"
    open_runs = 0  # in this process: a packed job's seeds each hold one at a time
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
        WandbBackend.open_runs += 1
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
            self._close(failed=summary.get("status") == "failed")

    def _close(self, failed: bool) -> None:
        try:
            self.run.finish(exit_code=1 if failed else 0)
        finally:
            WandbBackend.open_runs -= 1
            # the wandb-core service outlives finish(); a sweep in one process must not leak
            # it, and the other seeds of a pack still log through it
            if not WandbBackend.open_runs:
                self.wandb.teardown()


def run_label(config: Any) -> str:
    return f"{config.norm.mode}-bs{config.batch_size}-s{config.seed}"


def run_tags(config: Any) -> list[str]:
    """Mode, batch size, model, data, the kind of every schedule the mode's layers follow
    (``momentum:constant``, ``rmax:piecewise``), the mode's own tags, the sampler if not iid,
    ``centred_weights`` where the model has them, and the config's ``tags``."""
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
    if config.model.centred_weights:
        tags.append("centred_weights")
    return [*tags, *config.tags]


def _plain_config(config: Any) -> dict[str, Any]:
    return {**record_config(config), "provenance": provenance()}
