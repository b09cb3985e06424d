"""Hydra submitit launchers whose preemption hook saves the running trainer's checkpoint.

submitit calls the launched callable's ``checkpoint()`` when the job receives its preemption
or time-out signal (USR2), then requeues the same call. Hydra's launcher already resubmits
itself; these subclasses first write a fresh checkpoint of the run in progress, so the requeued
job (which resumes runs with ``resume=true``, the default) loses no step.
"""

from __future__ import annotations

from typing import Any

from hydra_plugins.hydra_submitit_launcher import submitit_launcher

from normlab.trainer import checkpoint_active_trainer


class _CheckpointOnPreemption:
    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        checkpoint_active_trainer()
        return super().checkpoint(*args, **kwargs)


class SlurmLauncher(_CheckpointOnPreemption, submitit_launcher.SlurmLauncher):
    """``hydra/launcher=slurm``: one SLURM job per run, requeued on preemption."""


class LocalLauncher(_CheckpointOnPreemption, submitit_launcher.LocalLauncher):
    """``hydra/launcher=submitit_requeue``: submitit's local executor with the same hook."""
