"""normlab's Hydra launchers: each hands its jobs to one of Hydra's own launchers (the
delegate), adding the sweep's progress and skipping runs already finished.

- Every launcher asks :func:`normlab.train.finished_run` about each job before dispatching it: a
  run already completed or diverged is reported as skipped, and never reaches the delegate (no
  job directory, saved configs or worker). Results come back one per job, in the jobs' order.
- ``sequential`` (the default): Hydra's basic launcher, one job at a time in this process, under
  the sweep's bar (runs done/total, completed/diverged/failed/skipped, elapsed, ETA;
  :mod:`normlab.progress`).
- ``joblib``: Hydra's joblib launcher. Its workers report their runs' steps through files
  (``NORMLAB_PROGRESS_DIR``), drawn under the sweep's bar.
- ``slurm``, ``submitit_requeue``: Hydra's submitit launchers (SLURM, local executor), whose
  preemption hook first writes a fresh checkpoint of the run in progress, so the requeued job
  (which resumes, ``resume=true``) loses no step.

Jobs run in other processes (joblib, submitit) report the end of their run through a file in the
sweep directory, so each finished run is counted as it ends, not when the whole batch returns.
"""

import contextlib
import copy
import dataclasses
import json
import logging
import os
import sys
import tempfile
import threading
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from hydra.core.config_loader import ConfigLoader
from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.config_source import ConfigSource
from hydra.plugins.launcher import Launcher
from hydra.plugins.search_path_plugin import SearchPathPlugin
from hydra.types import HydraContext, TaskFunction
from hydra_plugins.hydra_joblib_launcher.config import JobLibLauncherConf
from hydra_plugins.hydra_submitit_launcher import submitit_launcher
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from normlab.progress import PROGRESS_DIR, REPORT_EVERY_S, SweepProgress
from normlab.signals import checkpoint_active_trainer

_MODULE = "hydra_plugins.normlab_launcher.normlab_launcher"
# Hydra logs every job's overrides as it launches it; under the bar one count line says it.
_QUIET = ("hydra", "hydra_plugins.hydra_joblib_launcher")
_FINISHED = ".finished"  # suffix of a job's end-of-run report (step reports are *.json)


class NormlabLauncher(Launcher):
    """Skips finished runs, draws the sweep's progress and hands the other jobs to
    :attr:`delegate`, the Hydra launcher built from this launcher's own config (every key but
    ``_target_`` is the delegate's)."""

    delegate: ClassVar[str]  # the delegate's _target_
    in_process: ClassVar[bool] = False  # jobs run here, one per delegate call
    workers_report_steps: ClassVar[bool] = False

    def __init__(self, **delegate_options: Any) -> None:  # the delegate reads them from the config
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None
        self.task_configs: TaskConfigLoader | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        """The delegate composes each job it runs in full, as Hydra does. The checks before
        (Hydra's sweeper checks every job composes, this launcher whether its run is finished)
        share a :class:`TaskConfigLoader` through the context, which the sweeper holds too."""
        self.config = config
        self.task_function = task_function
        self.hydra_context = HydraContext(
            config_loader=hydra_context.config_loader, callbacks=hydra_context.callbacks
        )
        self.task_configs = TaskConfigLoader(hydra_context.config_loader)
        hydra_context.config_loader = self.task_configs

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> list[JobReturn]:
        assert self.config is not None
        task = self.config
        progress = SweepProgress(
            len(job_overrides),
            name=str(task.get("sweep", "sweep")),
            mode=str(task.get("progress", "auto")),
        )
        with _quiet_hydra_logs():
            checked = list(self._finished_runs(job_overrides))
            runs: list[JobReturn | None] = [ret for ret, _ in checked]
            cfgs = [cfg for _, cfg in checked]
            for ret in runs:
                if ret is not None:
                    _report(progress, ret)
            pending = [i for i, ret in enumerate(runs) if ret is None]
            packs = _spread(_packs(pending, cfgs), cfgs, self.workers())
            packing = PackingTask(
                self.task_function,
                {
                    tuple(job_overrides[pack[0]]): [
                        (list(job_overrides[i]), cfgs[i]) for i in pack[1:]
                    ]
                    for pack in packs
                    if len(pack) > 1
                },
            )
            if pending and self.in_process:
                delegate = self._delegate(packing)
                with progress.in_process():
                    for pack in packs:
                        leader = pack[0]
                        (ret,) = delegate.launch([job_overrides[leader]], initial_job_idx + leader)
                        members = _unpacked(ret, pack, job_overrides, cfgs)
                        for i, member in zip(pack, members, strict=True):
                            runs[i] = member
                            _report(progress, member)
            elif pending:
                packs = _longest_first(packs, cfgs)
                returned = self._launch_elsewhere(
                    [job_overrides[pack[0]] for pack in packs], initial_job_idx, progress, packing
                )
                for pack, ret in zip(packs, returned, strict=True):
                    members = _unpacked(ret, pack, job_overrides, cfgs)
                    for i, member in zip(pack, members, strict=True):
                        runs[i] = member
                self._report_unreported([runs[i] for i in pending], progress)
        progress.close()
        return runs

    def workers(self) -> int:
        """How many jobs the delegate runs at once: one unless it says."""
        return 1

    def _finished_runs(
        self, job_overrides: Sequence[Sequence[str]]
    ) -> Iterator[tuple[JobReturn | None, DictConfig]]:
        """Per job, the result of its run if already finished (what the run itself would return
        when skipping), else None; and its task config."""
        from normlab.train import finished_run

        assert self.task_configs is not None and self.config is not None
        for overrides in job_overrides:
            cfg = self.task_configs.load_sweep_config(self.config, list(overrides))
            summary = finished_run(cfg)
            done = (
                None
                if summary is None
                else JobReturn(
                    overrides=list(overrides),
                    cfg=cfg,
                    status=JobStatus.COMPLETED,
                    _return_value=summary,
                )
            )
            yield done, cfg

    def _launch_elsewhere(
        self,
        job_overrides: list[Sequence[str]],
        initial_job_idx: int,
        progress: SweepProgress,
        task_function: TaskFunction,
    ) -> Sequence[JobReturn]:
        """The delegate runs the jobs in other processes, which report each run's end (and, for
        :attr:`workers_report_steps`, its steps) to a folder in the sweep directory, shared with
        them wherever they run. It numbers the jobs it is given from ``initial_job_idx`` on, so
        with some runs skipped a job's ``hydra.job.num`` is not its place in the sweep."""
        assert self.config is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=sweep_dir, prefix=".normlab-progress-") as folder:
            task = ReportingTask(task_function, folder, self.workers_report_steps)
            steps = (
                progress.other_processes(Path(folder))
                if self.workers_report_steps
                else contextlib.nullcontext()
            )
            with steps, _FinishedRuns(Path(folder), progress) as reported:
                returned = self._delegate(task).launch(job_overrides, initial_job_idx)
        self._reported = reported
        return returned

    def _report_unreported(self, returned: Sequence[JobReturn], progress: SweepProgress) -> None:
        """Count the runs that ended without a report (their task never returned)."""
        reported = self._reported
        for ret in returned:
            key = tuple(ret.overrides or ())
            if reported[key]:
                reported[key] -= 1
            else:
                _report(progress, ret)

    def _delegate(self, task_function: TaskFunction) -> Launcher:
        assert self.config is not None and self.hydra_context is not None
        config = copy.deepcopy(self.config)
        with open_dict(config):
            config.hydra.launcher._target_ = self.delegate
        return Plugins.instance().instantiate_launcher(
            hydra_context=self.hydra_context, task_function=task_function, config=config
        )


# ----------------------------------------------------------------------------- packed seeds


@dataclass(frozen=True)
class PackedResults:
    """What a packed job returns: each member run's overrides and summary, leader first."""

    overrides: list[list[str]]
    summaries: list[Any]


@dataclass(frozen=True)
class PackingTask:
    """The task function, except for a pack's leader: that job trains the whole pack in one
    process (:func:`normlab.train.run_seeds_in_sweep`), its other members' configs composed by
    the launcher and carried here (``packs``: leader overrides -> members' overrides and
    configs)."""

    task_function: TaskFunction
    packs: dict[tuple[str, ...], list[tuple[list[str], DictConfig]]]

    def __call__(self, cfg: DictConfig) -> Any:
        leader = tuple(HydraConfig.get().overrides.task)
        members = self.packs.get(leader)
        if not members:
            return self.task_function(cfg)
        from normlab.train import run_seeds_in_sweep

        summaries = run_seeds_in_sweep([cfg, *(member for _, member in members)])
        return PackedResults([list(leader), *(o for o, _ in members)], summaries)


def _packs(pending: Sequence[int], cfgs: Sequence[DictConfig]) -> list[list[int]]:
    """The pending jobs in packs, each a setting's jobs that may train together (equal but for
    the seed, the learning-rate factor and the norm: :func:`normlab.train.pack_key`), in the
    order of their first job; a job that cannot be packed is a pack of its own, and says why
    once."""
    from normlab.train import pack_key

    packs: list[list[int]] = []
    by_key: dict[str, list[int]] = {}
    refusals: dict[str, None] = {}
    for i in pending:
        key, reason = pack_key(cfgs[i])
        if reason is not None:
            refusals[reason] = None
        if key is None:
            packs.append([i])
        elif key in by_key:
            by_key[key].append(i)
        else:
            by_key[key] = [i]
            packs.append(by_key[key])
    for reason in refusals:
        print(f"normlab-train: {reason}: its seeds train one per process", file=sys.stderr)
    return packs


def _length(pack: list[int], cfgs: Sequence[DictConfig]) -> float:
    """A job's length: its steps (or its epochs over its batch size: the jobs of one sweep share
    a data set) times its ranks."""
    cfg = cfgs[pack[0]]
    steps = cfg.get("steps")
    if steps is None:
        steps = float(cfg.get("epochs") or 1) / int(cfg.get("batch_size") or 1)
    return float(steps) * int(OmegaConf.select(cfg, "distributed.world_size", default=1))


# A packed step costs about what this many seeds' own work does on top of its seeds' (Python,
# dispatch and kernel set-up, paid once a step; docs/benchmarks.md: from about 5 at batch 1 to
# under 1 at batch 128, for the MNIST-1D models on CPU).
STEP_COST_IN_SEEDS = 4


def _duration(pack: list[int], cfgs: Sequence[DictConfig]) -> float:
    """How long a pack trains, in one seed's steps at batch 1: its length times its step's cost
    (:func:`normlab.train.step_cost`, the same for every job of a pack)."""
    return _length(pack, cfgs) * (STEP_COST_IN_SEEDS + len(pack)) * _step_cost(cfgs[pack[0]])


def _step_cost(cfg: DictConfig) -> float:
    from normlab.train import step_cost

    nodes = [OmegaConf.select(cfg, k) for k in ("model", "data")]
    key = json.dumps(
        [OmegaConf.to_container(n, resolve=False) if n is not None else None for n in nodes]
        + [cfg.get("batch_size")],
        sort_keys=True,
        default=str,
    )
    if key not in _STEP_COSTS:
        _STEP_COSTS[key] = step_cost(cfg)
    return _STEP_COSTS[key]


_STEP_COSTS: dict[str, float] = {}


def _longest_first(packs: list[list[int]], cfgs: Sequence[DictConfig]) -> list[list[int]]:
    """The packs in decreasing duration, so that a pool of workers finishes together rather than
    one worker running the longest job alone at the end."""
    return sorted(packs, key=lambda pack: _duration(pack, cfgs), reverse=True)


def _makespan(packs: list[list[int]], cfgs: Sequence[DictConfig], workers: int) -> float:
    """When the last worker finishes, each pack going, longest first, to the least busy one."""
    loads = [0.0] * workers
    for pack in _longest_first(packs, cfgs):
        loads[loads.index(min(loads))] += _duration(pack, cfgs)
    return max(loads)


def _spread(packs: list[list[int]], cfgs: Sequence[DictConfig], workers: int) -> list[list[int]]:
    """``packs``, the longest that holds two norms split in two between them, never within a
    norm: until each of ``workers`` has a pack (a sweep of one setting on two workers trains its
    two modes side by side, not one after the other), then while a split lets the workers finish
    sooner (a long pack would otherwise train alone at the end of the sweep)."""
    packs = list(packs)
    while True:
        mixed = [pack for pack in packs if len(_by_norm(pack, cfgs)) > 1]
        if not mixed:
            return packs
        longest = max(mixed, key=lambda pack: _duration(pack, cfgs))
        first, second = _halves(longest, cfgs)
        split = [first if pack is longest else pack for pack in packs] + [second]
        sooner = _makespan(split, cfgs, workers) < _makespan(packs, cfgs, workers)
        if len(packs) >= workers and not sooner:
            return packs
        packs = split


def _halves(pack: list[int], cfgs: Sequence[DictConfig]) -> list[list[int]]:
    """``pack`` in two at the norm boundary nearest half its runs."""
    blocks = _by_norm(pack, cfgs)
    sizes = [sum(len(b) for b in blocks[:cut]) for cut in range(1, len(blocks))]
    cut = 1 + min(range(len(sizes)), key=lambda i: abs(2 * sizes[i] - len(pack)))
    return [
        [i for block in blocks[:cut] for i in block],
        [i for block in blocks[cut:] for i in block],
    ]


def _by_norm(pack: list[int], cfgs: Sequence[DictConfig]) -> list[list[int]]:
    """The jobs of ``pack`` by norm config, in the order of each norm's first job."""
    blocks: dict[str, list[int]] = {}
    for i in pack:
        norm = OmegaConf.select(cfgs[i], "norm")
        key = json.dumps(OmegaConf.to_container(norm), sort_keys=True, default=str) if norm else ""
        blocks.setdefault(key, []).append(i)
    return list(blocks.values())


def _unpacked(
    ret: JobReturn,
    pack: Sequence[int],
    job_overrides: Sequence[Sequence[str]],
    cfgs: Sequence[DictConfig],
) -> list[JobReturn]:
    """One result per member of ``pack`` from its leader's: its own summary, or the leader's
    failure for every member."""
    value = ret._return_value
    if len(pack) == 1:
        return [ret]
    if ret.status == JobStatus.COMPLETED and isinstance(value, PackedResults):
        return [
            dataclasses.replace(ret, overrides=overrides, cfg=cfgs[i], _return_value=summary)
            for i, overrides, summary in zip(pack, value.overrides, value.summaries, strict=True)
        ]
    return [ret] + [
        dataclasses.replace(ret, cfg=cfgs[i], overrides=list(job_overrides[i])) for i in pack[1:]
    ]


class TaskConfigLoader(ConfigLoader):
    """Hydra's config loader for checking a sweep's jobs: each job's task config (without the
    ``hydra`` node), composed once per distinct set of config-group overrides (``norm=renorm``,
    ``+experiment=blowup``) and given the job's plain ``key=value`` overrides as Hydra gives
    them after composing (``OmegaConf.update(..., merge=True)``).

    Hydra composes every job from scratch (a tenth of a second), and before a job runs it is
    composed twice more: Hydra's sweeper checks that it composes, and the launcher asks whether
    its run is finished. Both go through this loader, most of re-running a finished study. A
    job with any other kind of override (``+key``, ``~key``) is composed in full."""

    def __init__(self, loader: ConfigLoader) -> None:
        self.loader = loader
        self._groups: dict[str, list[str]] = {}
        self._composed: dict[tuple[str, ...], DictConfig] = {}

    def load_sweep_config(
        self, master_config: DictConfig, sweep_overrides: list[str]
    ) -> DictConfig:
        overrides = OverridesParser.create().parse_overrides(list(sweep_overrides))
        groups = tuple(o.input_line for o in overrides if self._is_group(o))
        values = [o for o in overrides if not self._is_group(o)]
        if not all(_is_plain(o) for o in values):
            return self._compose(master_config, sweep_overrides)
        if groups not in self._composed:
            self._composed[groups] = self._compose(master_config, list(groups))
        config = copy.deepcopy(self._composed[groups])
        try:
            for override in values:
                OmegaConf.update(config, override.key_or_group, override.value(), merge=True)
        except OmegaConfBaseException:
            return self._compose(master_config, sweep_overrides)  # for Hydra's own error
        return config

    def _compose(self, master_config: DictConfig, overrides: list[str]) -> DictConfig:
        config = self.loader.load_sweep_config(master_config, list(overrides))
        with open_dict(config):
            del config["hydra"]
        return config

    def _is_group(self, override: Override) -> bool:
        parent, _, name = override.key_or_group.rpartition("/")
        if parent not in self._groups:
            self._groups[parent] = self.loader.list_groups(parent)
        return name in self._groups[parent]

    def load_configuration(self, *args: Any, **kwargs: Any) -> DictConfig:
        return self.loader.load_configuration(*args, **kwargs)

    def get_search_path(self) -> ConfigSearchPath:
        return self.loader.get_search_path()

    def get_sources(self) -> list[ConfigSource]:
        return self.loader.get_sources()

    def list_groups(self, parent_name: str) -> list[str]:
        return self.loader.list_groups(parent_name)

    def get_group_options(self, *args: Any, **kwargs: Any) -> list[str]:
        return self.loader.get_group_options(*args, **kwargs)

    def compute_defaults_list(self, *args: Any, **kwargs: Any) -> Any:
        return self.loader.compute_defaults_list(*args, **kwargs)


def _is_plain(override: Override) -> bool:
    """``key=value``: no ``+``, ``++`` or ``~``, no package, no sweep, not Hydra's own."""
    return not (
        override.is_delete()
        or override.is_add()
        or override.is_force_add()
        or override.is_sweep_override()
        or override.is_hydra_override()
        or override.package is not None
    )


@dataclass(frozen=True)
class ReportingTask:
    """The task function as a job in another process runs it: it writes the run's summary (or
    error) to ``folder`` when the run ends, and with ``report_steps`` has the run report its
    steps there too (:class:`normlab.progress.RunProgress`)."""

    task_function: TaskFunction
    folder: str
    report_steps: bool

    def __call__(self, cfg: DictConfig) -> Any:
        overrides = list(HydraConfig.get().overrides.task)
        previous = os.environ.get(PROGRESS_DIR)
        if self.report_steps:
            os.environ[PROGRESS_DIR] = self.folder
        try:
            summary = self.task_function(cfg)
        except Exception as error:
            self._write({"overrides": overrides, "error": f"{type(error).__name__}: {error}"})
            raise
        finally:
            if self.report_steps:
                _restore(PROGRESS_DIR, previous)
        if isinstance(summary, PackedResults):
            for member, result in zip(summary.overrides, summary.summaries, strict=True):
                self._write({"overrides": member, "summary": result})
        else:
            self._write({"overrides": overrides, "summary": summary})
        return summary

    def _write(self, report: dict[str, Any]) -> None:
        path = Path(self.folder) / f"{uuid.uuid4().hex}{_FINISHED}"
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(report, default=str))
        os.replace(temporary, path)


class _FinishedRuns:
    """Counts each run on the sweep's bar as its report appears in ``folder``; yields the
    reported jobs' overrides, counted, to tell them from jobs that ended without a report."""

    def __init__(self, folder: Path, progress: SweepProgress) -> None:
        self.folder, self.progress = folder, progress
        self.reported: Counter[tuple[str, ...]] = Counter()
        self.seen: set[Path] = set()
        self.stop = threading.Event()
        self.watcher = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> Counter[tuple[str, ...]]:
        self.watcher.start()
        return self.reported

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.watcher.join()
        self._collect()

    def _watch(self) -> None:
        while not self.stop.wait(REPORT_EVERY_S):
            self._collect()

    def _collect(self) -> None:
        for path in sorted(set(self.folder.glob(f"*{_FINISHED}")) - self.seen):
            self.seen.add(path)
            report = json.loads(path.read_text())
            self.reported[tuple(report["overrides"])] += 1
            summary = report.get("summary")
            self.progress.job_done(
                summary if isinstance(summary, dict) else None, error=report.get("error")
            )


def _report(progress: SweepProgress, ret: JobReturn) -> None:
    if ret.status == JobStatus.FAILED:
        progress.job_done(None, error=f"{type(ret._return_value).__name__}: {ret._return_value}")
    else:
        value = ret.return_value
        progress.job_done(value if isinstance(value, dict) else None)


@contextlib.contextmanager
def _quiet_hydra_logs() -> Iterator[None]:
    levels = {name: logging.getLogger(name).level for name in _QUIET}
    for name in _QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def _restore(key: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(key, None)
    else:
        os.environ[key] = value


def _hydra_launcher_target(name: str) -> str:
    """The ``_target_`` of Hydra's own ``hydra/launcher=NAME``, as Hydra registers it."""
    return str(ConfigStore.instance().load(f"hydra/launcher/{name}.yaml").node["_target_"])


class SequentialLauncher(NormlabLauncher):
    """``hydra/launcher=sequential`` (normlab's default): Hydra's basic launcher, jobs one after
    another in this process; a run's bar nests under the sweep's."""

    in_process = True

    @property
    def delegate(self) -> str:  # type: ignore[override]
        return _hydra_launcher_target("basic")


class JoblibLauncher(NormlabLauncher):
    """``hydra/launcher=joblib``: jobs in parallel worker processes (loky)."""

    delegate = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    workers_report_steps = True

    def workers(self) -> int:
        assert self.config is not None
        n_jobs = int(self.config.hydra.launcher.get("n_jobs") or 1)
        return n_jobs if n_jobs > 0 else max(1, (os.cpu_count() or 1) + 1 + n_jobs)  # joblib's


class _CheckpointsOnPreemption:
    """submitit calls the submitted callable's ``checkpoint()`` when its job receives the
    preemption or time-out signal (USR2), then requeues the call it returns: save the running
    trainer's checkpoint first."""

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        checkpoint_active_trainer()
        return super().checkpoint(*args, **kwargs)  # type: ignore[misc]


class CheckpointingSlurmLauncher(_CheckpointsOnPreemption, submitit_launcher.SlurmLauncher):
    """Hydra's submitit SLURM launcher with normlab's preemption hook."""


class CheckpointingLocalLauncher(_CheckpointsOnPreemption, submitit_launcher.LocalLauncher):
    """Hydra's submitit local launcher with normlab's preemption hook."""


class SlurmLauncher(NormlabLauncher):
    """``hydra/launcher=slurm``: one SLURM job per run, requeued on preemption."""

    delegate = f"{_MODULE}.CheckpointingSlurmLauncher"


class LocalLauncher(NormlabLauncher):
    """``hydra/launcher=submitit_requeue``: submitit's local executor, requeued on preemption."""

    delegate = f"{_MODULE}.CheckpointingLocalLauncher"


@dataclass
class SequentialLauncherConf:
    _target_: str = f"{_MODULE}.SequentialLauncher"


@dataclass
class NormlabJoblibLauncherConf(JobLibLauncherConf):
    _target_: str = f"{_MODULE}.JoblibLauncher"


class NormlabLauncherConfigs(SearchPathPlugin):
    """Stores normlab's launcher configs: ``sequential`` (conf/config.yaml's default) and
    ``joblib``, which replaces the joblib plugin's config of that name.

    Hydra runs every plugin module as it scans them, in the order of their folders on the path,
    and the joblib plugin's module stores its ``joblib`` config when it runs. Search-path plugins
    are called after the scan, whenever Hydra builds its config search path, so storing here
    wins whichever order the folders come in. The search path itself is left as it is."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        store = ConfigStore.instance()
        for name, node in (
            ("sequential", SequentialLauncherConf),
            ("joblib", NormlabJoblibLauncherConf),
        ):
            store.store(group="hydra/launcher", name=name, node=node, provider="normlab")
