"""normlab's Hydra launchers: Hydra's own, plus the sweep's progress and, for submitit, a
preemption hook that saves the running trainer's checkpoint.

- ``basic`` and ``joblib`` (registered under the names of Hydra's own, :func:`register`): a
  sweep bar (runs done/total, completed/diverged/failed/skipped, elapsed, ETA) and one line per
  finished run (:mod:`normlab.progress`). A run already completed or diverged is skipped here,
  before Hydra sets up its job (directory, logging, saved configs) or a worker starts. joblib
  workers report their runs' steps through files (``NORMLAB_PROGRESS_DIR``, passed to each job
  with Hydra's ``hydra.job.env_set``), results arrive as each job ends.
- ``slurm`` and ``submitit_requeue``: submitit calls the launched callable's ``checkpoint()``
  when the job receives its preemption or time-out signal (USR2), then requeues the same call;
  these subclasses first write a fresh checkpoint of the run in progress, so the requeued job
  (which resumes with ``resume=true``, the default) loses no step. The sweep bar advances as
  their result files appear.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_launcher import BasicLauncher as HydraBasicLauncher
from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, JobStatus
from hydra_plugins.hydra_joblib_launcher import _core as joblib_core
from hydra_plugins.hydra_joblib_launcher.config import JobLibLauncherConf
from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher as HydraJoblib
from hydra_plugins.hydra_submitit_launcher import submitit_launcher

from normlab.progress import PROGRESS_DIR, SweepProgress
from normlab.signals import checkpoint_active_trainer

_QUIET = ("hydra._internal.core_plugins.basic_launcher", "hydra_plugins.hydra_joblib_launcher")


class CachingConfigLoader:
    """Hydra's config loader, composing each sweep job once per distinct set of config-group
    overrides (``norm=renorm``, ``model=mlp``...) and applying the job's plain overrides
    (``batch_size=4 seed=1``) to a copy, as Hydra does after composing.

    Hydra composes every job of a sweep from scratch, twice (the sweeper checks the batch, the
    launcher composes again): about 0.1 s each, most of re-running a finished study. The cache
    lives in the process; a pickled loader (a joblib worker's) starts with an empty one.
    """

    def __init__(self, loader: Any) -> None:
        self._loader = loader
        self._composed: dict[tuple[str, ...], Any] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)

    def __getstate__(self) -> dict[str, Any]:
        return {"_loader": self._loader, "_composed": {}}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def load_sweep_config(self, master_config: Any, sweep_overrides: list[str]) -> Any:
        import copy

        from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname
        from hydra.core.override_parser.overrides_parser import OverridesParser
        from omegaconf import open_dict

        parsed = OverridesParser.create().parse_overrides(list(sweep_overrides))
        groups = [o for o in parsed if self._loader.repository.group_exists(o.key_or_group)]
        values = [o for o in parsed if o not in groups]
        key = tuple(o.input_line for o in groups)
        if key not in self._composed:
            self._composed[key] = self._loader.load_sweep_config(master_config, list(key))
        config = copy.deepcopy(self._composed[key])
        ConfigLoaderImpl._apply_overrides_to_config(values, config)
        with open_dict(config.hydra):
            for override in values:
                target = config.hydra.overrides
                (target.hydra if override.is_hydra_override() else target.task).append(
                    override.input_line
                )
            naming = config.hydra.job.config.override_dirname
            config.hydra.job.override_dirname = get_overrides_dirname(
                overrides=[o for o in parsed if not o.is_hydra_override()],
                kv_sep=naming.kv_sep,
                item_sep=naming.item_sep,
                exclude_keys=naming.exclude_keys,
            )
        return config


class _ComposesOncePerGroupChoice:
    """A launcher whose sweeper and jobs share a :class:`CachingConfigLoader`."""

    def setup(self, **kwargs: Any) -> None:
        super().setup(**kwargs)
        context = self.hydra_context
        if not isinstance(context.config_loader, CachingConfigLoader):
            context.config_loader = CachingConfigLoader(context.config_loader)


def _sweep_progress(launcher: Any, jobs: int) -> SweepProgress:
    task = launcher.config
    return SweepProgress(
        jobs, name=str(task.get("sweep", "sweep")), mode=str(task.get("progress", "auto"))
    )


def _finished_jobs(launcher: Any, job_overrides: Sequence[Sequence[str]]) -> dict[int, JobReturn]:
    """The jobs whose runs are already finished, by index, each with the summary a skipping
    job returns: composed here (once per group choice, :class:`CachingConfigLoader`) instead of
    set up as a Hydra job, which is most of re-running a finished study."""
    from omegaconf import open_dict

    from normlab.train import finished_run

    loader = launcher.hydra_context.config_loader
    finished = {}
    for index, overrides in enumerate(job_overrides):
        cfg = loader.load_sweep_config(launcher.config, list(overrides))
        with open_dict(cfg):
            del cfg["hydra"]
        summary = finished_run(cfg)
        if summary is not None:
            finished[index] = JobReturn(
                overrides=list(overrides),
                cfg=cfg,
                status=JobStatus.COMPLETED,
                _return_value=summary,
            )
    return finished


def _report(progress: SweepProgress, ret: JobReturn) -> None:
    if ret.status == JobStatus.FAILED:
        progress.job_done(None, error=f"{type(ret._return_value).__name__}: {ret._return_value}")
    else:
        value = ret.return_value
        progress.job_done(value if isinstance(value, dict) else None)


class _QuietHydraLogs:
    """Hydra logs every job's overrides as it starts; under a bar one count line says it."""

    def __enter__(self) -> None:
        self.levels = {name: logging.getLogger(name).level for name in _QUIET}
        for name in _QUIET:
            logging.getLogger(name).setLevel(logging.WARNING)

    def __exit__(self, *exc: object) -> None:
        for name, level in self.levels.items():
            logging.getLogger(name).setLevel(level)


class BasicLauncher(_ComposesOncePerGroupChoice, HydraBasicLauncher):
    """``hydra/launcher=basic`` (the default): jobs one after another in this process."""

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> list[JobReturn]:
        progress = _sweep_progress(self, len(job_overrides))
        runs = []
        with _QuietHydraLogs(), progress.in_process():
            finished = _finished_jobs(self, job_overrides)
            for offset, overrides in enumerate(job_overrides):
                ret = finished.get(offset)
                if ret is None:
                    (ret,) = super().launch([overrides], initial_job_idx + offset)
                _report(progress, ret)
                runs.append(ret)
        progress.close()
        return runs


def _indexed_job(index: int, *args: Any) -> tuple[int, JobReturn]:
    return index, joblib_core.execute_job(*args)


class JoblibLauncher(_ComposesOncePerGroupChoice, HydraJoblib):
    """``hydra/launcher=joblib``: jobs in parallel worker processes (loky), each reporting its
    steps to the sweep's bar; returns the results in the jobs' order, as Hydra expects."""

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> list[JobReturn]:
        from hydra.core.singleton import Singleton
        from hydra.core.utils import setup_globals
        from joblib import Parallel, delayed

        setup_globals()
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        options = dict(self.joblib, backend="loky", return_as="generator_unordered")
        joblib_core.process_joblib_cfg(options)
        progress = _sweep_progress(self, len(job_overrides))
        runs: list[JobReturn | None] = [None] * len(job_overrides)
        with _QuietHydraLogs():
            for offset, ret in _finished_jobs(self, job_overrides).items():
                _report(progress, ret)
                runs[offset] = ret
        state = Singleton.get_state()
        with tempfile.TemporaryDirectory(prefix="normlab-progress-") as folder:
            env = f"+hydra.job.env_set.{PROGRESS_DIR}={folder}"
            calls = (
                delayed(_indexed_job)(
                    offset,
                    initial_job_idx + offset,
                    [*overrides, env],
                    self.hydra_context,
                    self.config,
                    self.task_function,
                    state,
                )
                for offset, overrides in enumerate(job_overrides)
                if runs[offset] is None
            )
            pending = any(ret is None for ret in runs)  # no workers when every run is done
            with _QuietHydraLogs(), progress.other_processes(Path(folder)):
                for offset, ret in Parallel(**options)(calls) if pending else ():
                    _report(progress, ret)
                    runs[offset] = ret
        progress.close()
        return runs


class _CheckpointOnPreemption:
    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        checkpoint_active_trainer()
        return super().checkpoint(*args, **kwargs)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Any:
        progress = _sweep_progress(self, len(job_overrides))
        folder = Path(str(self.params["submitit_folder"]))
        stop = threading.Event()
        watcher = threading.Thread(
            target=_count_results, args=(folder, progress, stop), daemon=True
        )
        watcher.start()
        try:
            runs = super().launch(job_overrides, initial_job_idx)
        finally:
            stop.set()
            watcher.join()
        for ret in runs:
            _report(progress, ret)
        progress.close()
        return runs


def _count_results(folder: Path, progress: SweepProgress, stop: threading.Event) -> None:
    """Advance the bar as submitit's result files appear (one per finished job)."""
    seen = 0
    while not stop.wait(2.0):
        done = len(list(folder.rglob("*_result.pkl"))) if folder.exists() else 0
        if progress.bar is not None and done > seen:
            progress.bar.set_description(f"{progress.name} ({done} jobs done)")
            progress.bar.refresh()
        seen = done


class SlurmLauncher(_CheckpointOnPreemption, submitit_launcher.SlurmLauncher):
    """``hydra/launcher=slurm``: one SLURM job per run, requeued on preemption."""


class LocalLauncher(_CheckpointOnPreemption, submitit_launcher.LocalLauncher):
    """``hydra/launcher=submitit_requeue``: submitit's local executor with the same hook."""


@dataclass
class BasicLauncherConf:
    _target_: str = "hydra_plugins.normlab_launcher.normlab_launcher.BasicLauncher"


@dataclass
class NormlabJoblibLauncherConf(JobLibLauncherConf):
    _target_: str = "hydra_plugins.normlab_launcher.normlab_launcher.JoblibLauncher"


def register() -> None:
    """Put these launchers under Hydra's names ``basic`` (the default) and ``joblib``. Hydra runs
    every plugin module again when it scans them, core plugins first, then ``hydra_plugins.*``
    in name order: this module's call below comes after Hydra's and the joblib plugin's own."""
    store = ConfigStore.instance()
    store.store(group="hydra/launcher", name="basic", node=BasicLauncherConf, provider="normlab")
    store.store(
        group="hydra/launcher", name="joblib", node=NormlabJoblibLauncherConf, provider="normlab"
    )


register()
