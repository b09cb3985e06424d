"""``normlab-train``: the Hydra entry point that turns one config into one recorded run.

Order of work, so that bad input never costs a half-written record: validate the config, load
the data (file errors surface here), check the schedules against the run length and that the
model builds, and only then create the run directory. Any later failure is recorded in the
run's ``summary.json`` as ``failed``; in a multirun the sweep goes on.

A data-parallel run (``distributed.world_size > 1``) is checked and locked here as any other,
then trained by its ranks (:mod:`normlab.distributed`): spawned from here, or, under SLURM, the
step's tasks themselves; rank 0 keeps the record. A rank that fails fails the run, recorded.
"""

from __future__ import annotations

import functools
import json
import os
import random
import shutil
import socket
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from normlab import distributed
from normlab.config.identity import norm_record, record_config, run_directory
from normlab.config.schema import RunConfig, register_configs
from normlab.config.validation import build_checked_model, run_data_set, validate
from normlab.data import DataError, Dataset, hold_out_validation, load_dataset
from normlab.errors import ConfigError
from normlab.files import RunLock
from normlab.norms import kernels
from normlab.packed_trainer import PackedTrainer
from normlab.packing import oversized_reason, relative_step_cost, unpackable_reason
from normlab.progress import finished_line
from normlab.provenance import cpu_model, provenance
from normlab.records import (
    CHECKPOINT_FILE,
    FINISHED,
    METRICS_FILE,
    RunRecord,
    read_summary,
    write_summary,
)
from normlab.trainer import Trainer, total_steps

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
register_configs()


class InputError(Exception):
    """Bad config or data: reported in one line, before any run directory exists."""


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> dict[str, Any]:
    multirun = _is_multirun()
    try:
        return run(cfg)
    except InputError as error:
        print(f"normlab-train: {error}", file=sys.stderr)
        if multirun:
            return {"status": "invalid", "error": str(error)}
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        raise
    except Exception:
        if multirun:  # recorded as failed by run(); the sweep goes on
            return {"status": "failed", "error": traceback.format_exc(limit=3)}
        raise


def _is_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def run(cfg: DictConfig) -> dict[str, Any]:
    """Validate, prepare and train one config; return its summary. A run already finished is
    skipped before anything is loaded."""
    try:
        config = validate(cfg)
    except ConfigError as error:
        raise InputError(str(error)) from None
    run_dir = run_directory(config)
    finished = _finished(run_dir, config)
    if finished is not None:
        return finished
    try:
        config, data, model = _prepare(cfg, config)
        slurm = _slurm_rank(config)
    except (ConfigError, DataError) as error:
        raise InputError(str(error)) from None
    if slurm is not None and not slurm.leads:  # rank 0's task holds the lock and the record
        store = distributed.rendezvous_file(run_dir, distributed.slurm_tag())
        return _train_rank(slurm.rank, config, run_dir, store, slurm)
    lock = RunLock(run_dir)
    if not lock.acquire():
        print(f"normlab-train: {run_dir} is being run by {lock.holder()}; skipped", file=sys.stderr)
        return {"status": "skipped", "skipped": True, "run_dir": str(run_dir)}
    try:
        if slurm is not None:
            store = distributed.rendezvous_file(run_dir, distributed.slurm_tag())
            return _train_rank(0, config, run_dir, store, slurm)
        if config.distributed.world_size > 1:
            return _spawn_ranks(config, run_dir)
        return _run_locked(config, data, model, run_dir)
    finally:
        lock.release()


def _slurm_rank(config: RunConfig) -> distributed.Rank | None:
    """The rank a SLURM task of a data-parallel run is; its step must have a task per rank."""
    world = config.distributed.world_size
    slurm = distributed.slurm_rank()
    if world == 1 or slurm is None:
        return None
    if slurm.world_size != world:
        allowed = f"{slurm.world_size}, the tasks of this SLURM step (SLURM_NTASKS)"
        raise ConfigError("distributed.world_size", world, allowed)
    return slurm


def _spawn_ranks(config: RunConfig, run_dir: Path) -> dict[str, Any]:
    """Train on ``world_size`` spawned ranks; a rank that raised or died fails the run, its
    record kept (rank 0 may have been stopped before it could say so)."""
    store = distributed.fresh_rendezvous(run_dir)
    world = config.distributed.world_size
    try:
        distributed.spawn(_train_rank, world, store, (config, run_dir, store))
    except distributed.RankFailed as failure:
        summary = read_summary(run_dir) or {"run_id": run_dir.name, "sweep": config.sweep}
        if summary.get("status") in (None, "running", "failed"):
            fields = {"status": "failed", "failed_rank": failure.rank, "error": failure.reason}
            run_dir.mkdir(parents=True, exist_ok=True)
            write_summary(run_dir, {**summary, **fields})
        raise
    finally:
        store.unlink(missing_ok=True)
    return read_summary(run_dir) or {}


def _train_rank(
    index: int, config: RunConfig, run_dir: Path, store: Path, slurm: distributed.Rank | None = None
) -> dict[str, Any]:
    """One rank of a data-parallel run (spawned here, or the SLURM task ``slurm``): its own data,
    model (seeded alike) and trainer; rank 0 records the run."""
    world = config.distributed.world_size
    rank = slurm or distributed.Rank(index, world, index, world)
    distributed.quiet_unless_leading(rank)
    device = distributed.rank_device(resolve_device(config.device), rank)
    distributed.init_process_group(rank, store, config.distributed, device)
    try:
        torch.set_num_threads(config.threads or 1)
        seed_everything(config.seed, config.deterministic and device.type == "cuda")
        data = load_run_data(config, device)
        model = build_run_model(config, data).to(device)
        make_trainer = functools.partial(distributed.DataParallelTrainer, rank=rank)
        if rank.leads:
            return _run_locked(config, data, model, run_dir, make_trainer)
        checkpoint = run_dir / CHECKPOINT_FILE
        record = distributed.Unrecorded(run_dir)
        trainer = make_trainer(config, data, model, record, device, checkpoint)
        if config.resume and not config.overwrite and checkpoint.exists():
            trainer.resume_from(checkpoint)
        return trainer.fit()
    except Exception as error:
        distributed.note_failure(store, rank.rank, error)
        raise
    finally:
        distributed.close_process_group()
        if rank.leads:
            store.unlink(missing_ok=True)


def finished_run(cfg: DictConfig) -> dict[str, Any] | None:
    """The summary of the run ``cfg`` describes if it already completed or diverged, as
    :func:`run` would skip it; None otherwise (a config that does not validate is left to
    :func:`run`, which reports it). The launchers ask before they dispatch a job."""
    try:
        config = validate(cfg)
    except ConfigError:
        return None
    return _finished(run_directory(config), config)


def _finished(run_dir: Path, config: RunConfig) -> dict[str, Any] | None:
    """The summary of a run already completed or diverged, unless told to overwrite it."""
    previous = read_summary(run_dir)
    if not previous or previous.get("status") not in FINISHED or config.overwrite:
        return None
    print(f"normlab-train: {run_dir} already {previous['status']}; skipped", file=sys.stderr)
    return {**previous, "skipped": True}


def _prepare(cfg: DictConfig, config: RunConfig) -> tuple[RunConfig, Dataset, torch.nn.Module]:
    """Data on the device (file errors surface here), the config checked against the run's
    length, threads and seeds set, and the model built."""
    device = resolve_device(config.device)
    data = load_run_data(config, device)
    config = validate(cfg, total_steps(config, len(data.y_train)))
    _check_batch_fits(config, data)
    _set_threads(config.threads)
    seed_everything(config.seed, config.deterministic and device.type == "cuda")
    return config, data, build_run_model(config, data).to(device)


def load_run_data(config: RunConfig, device: torch.device) -> Dataset:
    """The run's data set, registered or from outside; with ``data.eval_split=validation`` the
    evaluated set is a fixed part of the training set, the test split left unseen."""
    spec = config.data
    data = load_dataset(
        run_data_set(config),
        spec.root,
        config.paths.cache,
        spec.download,
        device,
        spec.train_size,
        spec.val_size,
    )
    if spec.eval_split == "validation":
        data = hold_out_validation(data, spec.validation_fraction)
    return data


def _run_locked(
    config: RunConfig,
    data: Dataset,
    model: torch.nn.Module,
    run_dir: Path,
    make_trainer: Any = Trainer,
) -> dict[str, Any]:
    started = _start(config, data, model, run_dir, make_trainer)
    return started if isinstance(started, dict) else _fit_alone(started)


@dataclass
class _Started:
    """A run whose record is open and whose trainer is ready (resumed where it stopped)."""

    config: RunConfig
    run_dir: Path
    record: RunRecord
    trainer: Trainer
    identity: dict[str, Any]
    checkpoint: Path

    def _finish(self, summary: dict[str, Any], figures: list[Path] | None = None) -> None:
        self.record.write_trace(self.trainer.trace_rows())
        self.record.finish(summary, figures)

    def abort(self, error: BaseException) -> None:
        """Record the run as interrupted (``SystemExit``: submitit requeues a preempted job by
        exiting from its signal handler) or failed, with what it had done."""
        summary = {**self.identity, **self.trainer.summary()}
        if isinstance(error, SystemExit):
            self._finish({**summary, "status": "interrupted"})
            return
        tail = "".join(traceback.format_exception(error)[-6:])
        self._finish({**summary, "status": "failed", "error": tail})

    def conclude(self, result: dict[str, Any]) -> dict[str, Any]:
        """Write the summary of a run that stopped by itself (completed, diverged or
        interrupted by a signal) and keep or drop its checkpoint."""
        summary = {**self.identity, **result, "finished_at": _now()}
        self._finish(summary, _figures_for_backends(self.record, self.config, self.run_dir))
        if not _is_multirun():  # a sweep's launcher prints this line as each job ends
            print(f"normlab-train: {finished_line(summary)}", file=sys.stderr)
        if summary["status"] in FINISHED:
            if self.config.checkpoint.keep_final:
                self.trainer.save_checkpoint()
            else:
                self.checkpoint.unlink(missing_ok=True)
        return summary


def _start(
    config: RunConfig,
    data: Dataset,
    model: torch.nn.Module,
    run_dir: Path,
    make_trainer: Any = Trainer,
) -> _Started | dict[str, Any]:
    """Open the run's record and build its trainer, resumed from its checkpoint if it has one;
    the summary of a run another job finished meanwhile instead."""
    finished = _finished(run_dir, config)
    if finished is not None:
        return finished
    checkpoint = run_dir / CHECKPOINT_FILE
    resuming = config.resume and not config.overwrite and checkpoint.exists()
    if not resuming and run_dir.exists():
        _clear_record(run_dir)
    device = data.x_train.device
    record = RunRecord(run_dir)
    trainer = make_trainer(config, data, model, record, device, checkpoint)
    resumed_step = trainer.resume_from(checkpoint) if resuming else None
    record.open(OmegaConf.to_yaml(record_config(config)), keep_until_step=resumed_step)
    _attach_backends(record, config, run_dir)
    identity = _identity(config, run_dir, device, resumed_step)
    _say_what_the_layer_lacks(config)
    record.write_summary({**identity, "status": "running"})
    return _Started(config, run_dir, record, trainer, identity, checkpoint)


def _check_batch_fits(config: RunConfig, data: Dataset) -> None:
    if config.batch_size > len(data.y_train):
        raise ConfigError(
            "batch_size", config.batch_size, f"at most the {len(data.y_train)} training examples"
        )


def build_run_model(config: RunConfig, data: Dataset) -> torch.nn.Module:
    return build_checked_model(config, data.input_shape, data.num_classes, config.norm.build)


def _attach_backends(record: RunRecord, config: RunConfig, run_dir: Path) -> None:
    if not config.logger.wandb.enabled:
        return
    from normlab.loggers import WandbBackend

    try:
        record.add_backend(WandbBackend(config, run_dir))
    except Exception as error:  # no dashboard is no reason to lose the run
        record.backend_failed("wandb", error)


def _figures_for_backends(record: RunRecord, config: RunConfig, run_dir: Path) -> list[Path]:
    """The run's own figure, drawn only when a backend (wandb) will show it."""
    if not record.backends or not config.logger.wandb.log_figures:
        return []
    try:
        import pandas as pd

        from normlab.plots import run_figure

        return [run_figure(pd.read_csv(run_dir / METRICS_FILE), run_dir / "run.png")]
    except Exception as error:  # a missing picture must not cost the record
        record.backend_failed("figure", error)
        return []


def _say_what_the_layer_lacks(config: RunConfig) -> None:
    lacks = config.norm.lacks()
    if lacks:
        print(
            f"normlab-train: norm={config.norm.mode} ({config.norm.target}) is not a "
            f"normlab.norms.RunningStatsNorm: it trains without {', '.join(lacks)}",
            file=sys.stderr,
        )


def _clear_record(run_dir: Path) -> None:
    for child in run_dir.iterdir():
        if child.name.startswith(".lock"):
            continue
        if child.is_dir():
            shutil.rmtree(child)
        else:
            child.unlink()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", name, "auto or cpu: no CUDA device is available here")
    return torch.device(name)


def _set_threads(threads: int) -> None:
    if threads == 0 and HydraConfig.initialized():
        n_jobs = HydraConfig.get().launcher.get("n_jobs")
        if n_jobs:
            cores = os.cpu_count() or 1
            threads = max(1, cores // (cores if n_jobs < 0 else n_jobs))
    if threads > 0:
        torch.set_num_threads(threads)


def seed_everything(seed: int, deterministic_kernels: bool = False) -> None:
    """Seed every generator. CPU kernels used here are already deterministic for a fixed thread
    count; on CUDA, ``deterministic_kernels`` also picks deterministic cuDNN/cuBLAS kernels
    (the switch costs a second of imports, so it is only thrown where it matters)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic_kernels:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)


def _identity(
    config: RunConfig, run_dir: Path, device: torch.device, resumed_step: int | None
) -> dict[str, Any]:
    return {
        "run_id": run_dir.name,
        "sweep": config.sweep,
        "run_dir": str(run_dir),
        "norm": config.norm.mode,
        **norm_record(config),
        **distributed.identity(config),
        "norm_lacks": config.norm.lacks(),
        "batch_size": config.batch_size,
        "seed": config.seed,
        "device": str(device),
        "device_name": device_name(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        # moving_average and renorm steps: the compiled CPU op or the pure-PyTorch layers
        "compiled_norm_step": kernels.available_on(device),
        "host": socket.gethostname(),
        **provenance(),
        "pid": os.getpid(),
        "started_at": _now(),
        "resumed_from_step": resumed_step,
        "wall_clock_start": time.time(),
    }


def device_name(device: torch.device | str) -> str:
    """The GPU's name for a CUDA device, else the CPU model (benchmarks print it too)."""
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ----------------------------------------------------------------------------- packed seeds


def pack_key(cfg: DictConfig) -> tuple[str | None, str | None]:
    """What a sweep job must share with others to train packed with them (its whole config but
    the seed, the learning-rate factor and the norm: a setting's modes pack together), and why
    it trains alone if it does: ``(key, None)``, ``(None, reason)``, or ``(None, None)`` for
    ``pack=false`` or a config left to :func:`run` to report."""
    if not cfg.get("pack", True):
        return None, None
    for node in ("model", "norm"):  # read raw: an outside mode's name is its YAML file's
        target = OmegaConf.select(cfg, f"{node}._target_")
        if target:
            return None, f"{node}={target} comes from outside normlab"
    try:
        config = validate(cfg)
        device = resolve_device(config.device)
    except ConfigError:
        return None, None
    reason = unpackable_reason(config) or oversized_reason(config, device)
    if reason is not None:
        return None, reason
    node = OmegaConf.to_container(cfg, resolve=False)
    node.pop("seed", None)
    node.pop("norm", None)
    node.get("optim", {}).pop("lr_factor", None)
    return json.dumps(node, sort_keys=True, default=str), None


def step_cost(cfg: DictConfig) -> float:
    """:func:`normlab.packing.relative_step_cost` of a sweep job; 1 for a config left to
    :func:`run` to report."""
    try:
        return relative_step_cost(validate(cfg))
    except Exception:  # only a reckoning: never a reason to stop a sweep
        return 1.0


def run_seeds_in_sweep(cfgs: Sequence[DictConfig]) -> list[dict[str, Any]]:
    """:func:`run_seeds` as a sweep's job: bad input or a failure is every run's result (each
    record says what happened to it), and the sweep goes on."""
    try:
        return run_seeds(cfgs)
    except InputError as error:
        print(f"normlab-train: {error}", file=sys.stderr)
        return [{"status": "invalid", "error": str(error)} for _ in cfgs]
    except KeyboardInterrupt:
        raise
    except Exception:
        return [{"status": "failed", "error": traceback.format_exc(limit=3)} for _ in cfgs]


def run_seeds(cfgs: Sequence[DictConfig]) -> list[dict[str, Any]]:
    """Train the runs of one setting (configs equal but for the seed, the learning-rate factor
    and the norm) in one packed model (:mod:`normlab.packed_trainer`); return their summaries
    in order. Each run is its own record, as :func:`run` makes it; finished runs are skipped,
    and runs resumed at different steps train in one pack per step."""
    configs: list[RunConfig] = []
    for cfg in cfgs:
        try:
            configs.append(validate(cfg))
        except ConfigError as error:
            raise InputError(str(error)) from None
    run_dirs = [run_directory(config) for config in configs]
    summaries: list[dict[str, Any] | None] = [
        _finished(run_dir, config) for run_dir, config in zip(run_dirs, configs, strict=True)
    ]
    todo = [i for i, summary in enumerate(summaries) if summary is None]
    if not todo:
        return summaries
    try:
        data, models, checked = _prepare_seeds([cfgs[i] for i in todo], [configs[i] for i in todo])
    except (ConfigError, DataError) as error:
        raise InputError(str(error)) from None
    for i, config in zip(todo, checked, strict=True):
        configs[i] = config
    locks = []
    started: dict[int, _Started] = {}
    try:
        for i, model in zip(todo, models, strict=True):
            config = configs[i]
            lock = RunLock(run_dirs[i])
            if not lock.acquire():
                print(f"normlab-train: {run_dirs[i]} is being run by {lock.holder()}; skipped")
                summaries[i] = {"status": "skipped", "skipped": True, "run_dir": str(run_dirs[i])}
                continue
            locks.append(lock)
            begun = _start(config, data, model, run_dirs[i])
            if isinstance(begun, dict):
                summaries[i] = begun
            else:
                started[i] = begun
        at_step: dict[int, list[int]] = {}
        for i, begun in started.items():
            at_step.setdefault(begun.trainer.step, []).append(i)
        for indices in at_step.values():
            for i, summary in _fit_together([started[i] for i in indices]).items():
                summaries[indices[i]] = summary
    finally:
        for lock in locks:
            lock.release()
    return summaries


def _prepare_seeds(
    cfgs: Sequence[DictConfig], configs: Sequence[RunConfig]
) -> tuple[Dataset, list[torch.nn.Module], list[RunConfig]]:
    """The data once, each config checked against the run's length, and each seed's model
    built from its own seed as :func:`_prepare` builds it."""
    first = configs[0]
    device = resolve_device(first.device)
    data = load_run_data(first, device)
    checked = [validate(cfg, total_steps(first, len(data.y_train))) for cfg in cfgs]
    _check_batch_fits(first, data)
    _set_threads(first.threads)
    models = []
    for config in checked:
        seed_everything(config.seed, config.deterministic and device.type == "cuda")
        models.append(build_run_model(config, data).to(device))
    return data, models, checked


def _fit_together(runs: list[_Started]) -> dict[int, dict[str, Any]]:
    """Train ``runs`` (all at one step) packed, or alone where there is one or a run cannot be
    packed; their summaries by position."""
    reasons = [unpackable_reason(run.config) for run in runs]
    for reason in dict.fromkeys(r for r in reasons if r is not None):
        print(f"normlab-train: {reason}: its seeds train one at a time", file=sys.stderr)
    together = [i for i, reason in enumerate(reasons) if reason is None]
    done = {i: _fit_alone(run) for i, run in enumerate(runs) if reasons[i] is not None}
    if len(together) == 1:
        done[together[0]] = _fit_alone(runs[together[0]])
    elif together:
        done.update(_fit_packed([runs[i] for i in together], together))
    return done


def _fit_packed(runs: list[_Started], places: list[int]) -> dict[int, dict[str, Any]]:
    """Train ``runs`` in one pack; their summaries by ``places``."""
    done: dict[int, dict[str, Any]] = {}

    def finished(index: int, result: dict[str, Any]) -> None:
        done[places[index]] = runs[index].conclude(result)

    try:
        PackedTrainer([run.trainer for run in runs], finished).fit()
    except BaseException as error:
        for index, run in enumerate(runs):
            if places[index] not in done:
                run.abort(error)
        raise
    if any(
        done[place]["status"] == "interrupted" and run.trainer.stop_signal == "SIGINT"
        for place, run in zip(places, runs, strict=True)
        if place in done
    ):
        raise KeyboardInterrupt
    return done


def _fit_alone(run: _Started) -> dict[str, Any]:
    try:
        result = run.trainer.fit()
    except BaseException as error:
        run.abort(error)
        raise
    summary = run.conclude(result)
    if summary["status"] == "interrupted" and run.trainer.stop_signal == "SIGINT":
        raise KeyboardInterrupt
    return summary


if __name__ == "__main__":
    main()
