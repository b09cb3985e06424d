"""Data-parallel runs and synchronized statistics (normlab.distributed, normlab.norms.sync).

Processes cost seconds each, so one spawned pair of ranks (gloo, CPU, float64) checks every
layer case, and the run-level tests train a few steps on the smallest model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.multiprocessing as mp
from conftest import FAST
from distributed_workers import cuda_worker, layer_worker
from test_outside_mode import EXAMPLE, SEARCH

from normlab import distributed
from normlab.config.identity import run_id
from normlab.config.schema import DistributedConfig
from normlab.config.validation import validate
from normlab.errors import ConfigError
from normlab.norms.sync import combine

RUN = ("model=mlp", "steps=4", "eval_every=2", "eval.train_subset=64", "data.val_size=64")


# ----------------------------------------------------------------------------- no processes


def test_chan_combination_is_exact_for_unequal_parts_and_an_empty_one():
    g = torch.Generator().manual_seed(0)
    parts = [torch.randn(n, 3, generator=g, dtype=torch.float64) * 5 + 100 for n in (1, 7, 0, 4)]
    counts = torch.tensor([float(len(p)) for p in parts], dtype=torch.float64)
    means = torch.stack(
        [p.mean(0) if len(p) else torch.zeros(3, dtype=torch.float64) for p in parts]
    )
    m2 = torch.stack([((p - p.mean(0)) ** 2).sum(0) if len(p) else torch.zeros(3) for p in parts])
    total, mean, combined_m2 = combine(counts, means, m2.double())
    whole = torch.cat(parts)
    assert total == 12
    torch.testing.assert_close(mean, whole.mean(0), rtol=1e-14, atol=0)
    torch.testing.assert_close(combined_m2 / (total - 1), whole.var(0), rtol=1e-12, atol=0)


def test_shard_gives_each_rank_its_contiguous_slice_of_the_global_batch():
    batch = torch.arange(12)
    slices = [distributed.shard(batch, r, 3) for r in range(3)]
    assert [s.tolist() for s in slices] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]


def test_nccl_only_where_every_cuda_rank_has_a_device_of_its_own(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: None)
    auto, cuda = DistributedConfig(), torch.device("cuda")
    assert distributed.backend(auto, torch.device("cpu"), distributed.Rank(0, 2, 0, 2)) == "gloo"
    assert distributed.backend(auto, cuda, distributed.Rank(1, 4, 1, 2)) == "nccl"
    assert distributed.backend(auto, cuda, distributed.Rank(2, 4, 2, 4)) == "gloo"
    assert distributed.rank_device(cuda, distributed.Rank(3, 4, 3, 4)) == torch.device("cuda", 1)


def test_slurm_tasks_are_ranks_and_one_task_is_none():
    env = {"SLURM_NTASKS": "4", "SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "77"}
    assert distributed.slurm_rank(env) == distributed.Rank(3, 4, 1, 4)
    uneven = {**env, "SLURM_NTASKS": "7", "SLURM_TASKS_PER_NODE": "2(x3),1"}
    assert distributed.slurm_rank(uneven) == distributed.Rank(3, 7, 1, 2)
    assert distributed.slurm_rank({"SLURM_NTASKS": "1", "SLURM_PROCID": "0"}) is None
    assert distributed.slurm_rank({}) is None
    assert distributed.slurm_tag(env) == "slurm-77-0-0"


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["distributed.world_size=0"], "distributed.world_size"),
        (["distributed.world_size=3"], "distributed.world_size"),  # 32 is not a multiple of 3
        (["distributed.timeout_s=0"], "distributed.timeout_s"),
        (["norm=group", "norm.sync=true"], "norm.sync"),
        (["norm=online", "norm.sync=true"], "norm.sync"),
        (["norm.virtual_batch_size=8", "norm.sync=true"], "norm.sync"),
    ],
)
def test_bad_distributed_values_fail_in_one_line_naming_the_key(compose_config, overrides, key):
    with pytest.raises(ConfigError) as error:
        validate(compose_config(*overrides))
    assert error.value.key == key and "\n" not in str(error.value)


def test_world_size_is_in_the_run_id_and_how_ranks_meet_is_not(compose_config):
    plain = run_id(validate(compose_config()))
    assert run_id(validate(compose_config("distributed.world_size=1"))) == plain
    assert run_id(validate(compose_config("distributed.timeout_s=60"))) == plain
    assert run_id(validate(compose_config("distributed.backend=gloo"))) == plain
    assert run_id(validate(compose_config("distributed.world_size=2"))) != plain
    two = run_id(validate(compose_config("distributed.world_size=2")))
    assert run_id(validate(compose_config("distributed.world_size=2", "norm.sync=true"))) != two


def test_a_slurm_step_with_another_task_count_fails_before_any_rank_starts(cli, monkeypatch):
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setenv("SLURM_PROCID", "0")
    result = cli("distributed.world_size=2", *RUN)
    assert result.code == 2
    assert "distributed.world_size" in result.err and "SLURM_NTASKS" in result.err
    assert not result.run_dirs()


# ----------------------------------------------------------------------------- two ranks, layers


def test_synchronized_layers_are_one_process_on_the_concatenated_batch(tmp_path):
    """Output, input gradient, summed weight and bias gradients and running buffers of every
    synchronized mode (unequal rows per rank, an empty rank) equal one process on the whole
    batch, every rank holding the same buffers; per-device statistics equal ghost batches."""
    mp.start_processes(
        layer_worker, args=(str(tmp_path / "store"),), nprocs=2, start_method="spawn"
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_synchronized_batch_equals_torch_sync_batch_norm_on_cuda(tmp_path):
    mp.start_processes(cuda_worker, args=(str(tmp_path / "store"),), nprocs=2, start_method="spawn")


# ----------------------------------------------------------------------------- two ranks, runs


def _metrics(result, world_size: int) -> pd.DataFrame:
    for run_dir in result.run_dirs():
        summary = json.loads((run_dir / "summary.json").read_text())
        if summary.get("world_size", 1) == world_size:
            assert summary["status"] == "completed", summary
            return pd.read_csv(run_dir / "metrics.csv")
    raise AssertionError(f"no run of world size {world_size}")


COMPARED = ["loss", "param_norm", "grad_norm", "val_loss", "val_acc_eval"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                          reason="needs a CUDA device"))],
)  # fmt: skip
def test_a_synchronized_run_trains_as_one_process_at_the_global_batch(cli, device):
    """Also on CUDA, where two ranks share one device through gloo when there is one."""
    result = cli("-m", "distributed.world_size=1,2", "norm.sync=true", f"device={device}", *RUN)
    assert result.code == 0, result.err
    one, two = _metrics(result, 1), _metrics(result, 2)
    assert len(one) == len(two) == 3
    pd.testing.assert_frame_equal(two[COMPARED], one[COMPARED], rtol=1e-4)
    assert [s["statistics_batch_size"] for s in _summaries(result)] == [32, 32]


@pytest.mark.slow
def test_a_per_device_run_trains_as_ghost_batches_in_one_process(cli):
    ghost = cli("norm.virtual_batch_size=16", *RUN)
    ranks = cli("distributed.world_size=2", *RUN)
    assert ghost.code == 0 and ranks.code == 0, ranks.err
    one, two = _metrics(ghost, 1), _metrics(ranks, 2)
    # eval mode reads the ranks' averaged running statistics, as the ghost run's own
    pd.testing.assert_frame_equal(two[COMPARED], one[COMPARED], rtol=1e-4)
    (summary,) = [s for s in _summaries(ranks) if s.get("world_size") == 2]
    assert summary["statistics_batch_size"] == 16 and summary["norm_sync"] is False


def _summaries(result):
    return [json.loads((d / "summary.json").read_text()) for d in result.run_dirs()]


@pytest.mark.slow
def test_a_rank_that_raises_or_is_killed_fails_its_run_and_the_sweep_goes_on(cli, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))
    result = cli(
        SEARCH, "-m", "norm=faulty_batch", "norm.fault=raise,kill", "distributed.world_size=2", *RUN
    )
    assert result.code == 0, result.err
    summaries = {s["run_id"]: s for s in _summaries(result)}
    assert len(summaries) == 2, "the second run ran after the first failed"
    errors = []
    for run_dir in result.run_dirs():
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] == "failed" and summary["failed_rank"] == 1, summary
        assert len(pd.read_csv(run_dir / "metrics.csv")) >= 1, "the record is kept"
        errors.append(summary["error"])
    assert any("failed on purpose" in e for e in errors), errors
    assert any("SIGKILL" in e for e in errors), errors


CLOSED_GROUP_THREADS = """
import os, sys, torch
from pathlib import Path
from normlab import distributed
from normlab.config.schema import DistributedConfig

def threads():
    return len(os.listdir("/proc/self/task"))

torch.set_num_threads(1)
before = threads()
rank = distributed.Rank(0, 1)
distributed.init_process_group(rank, Path(sys.argv[1]), DistributedConfig(), torch.device("cpu"))
during = threads()
torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)  # torch's lazy compiler import
distributed.close_process_group()
print(before, during, threads())
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads in /proc")
def test_closing_the_process_group_stops_gloos_threads_after_the_first_optimizer(tmp_path):
    """A group left alive at exit let a gloo thread free a collective's tensors while the
    interpreter shut down, and the rank died of SIGABRT (about 1 run in 10). A fresh interpreter,
    as a spawned rank's: torch has not yet imported what the first optimizer imports."""
    script = [sys.executable, "-c", CLOSED_GROUP_THREADS, str(tmp_path / "store")]
    out = subprocess.run(script, capture_output=True, text=True, timeout=120, check=True).stdout
    before, during, after = map(int, out.split())
    assert during > before, "gloo started no threads: nothing to check"
    assert after == before, f"threads: {before} before the group, {during} in it, {after} after"


@pytest.mark.slow
def test_slurm_tasks_are_the_ranks_without_spawning(cli, tmp_path):
    """Two processes started as SLURM starts a step's tasks (faked environment) meet, train,
    and rank 0 alone records the run, which one process at the global batch matches."""
    results = tmp_path / "results"
    args = [f"paths.results={results}", *FAST, *RUN, "progress=off", "norm.sync=true"]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(distributed.__file__).parents[1]), *sys.path]),
        "SLURM_NTASKS": "2",
        "SLURM_JOB_ID": "4242",
    }
    command = [sys.executable, "-m", "normlab.train", "distributed.world_size=2", "sweep=t", *args]
    tasks = [
        subprocess.Popen(
            command,
            env={**env, "SLURM_PROCID": str(r), "SLURM_LOCALID": str(r)},
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(2)
    ]
    errors = [task.communicate(timeout=300)[1] for task in tasks]
    assert [task.returncode for task in tasks] == [0, 0], errors
    one = cli("sweep=t", "norm.sync=true", *RUN, results=results)
    assert one.code == 0, one.err
    pd.testing.assert_frame_equal(_metrics(one, 2)[COMPARED], _metrics(one, 1)[COMPARED], rtol=1e-4)
    assert len(one.run_dirs()) == 2, "rank 1 wrote no record of its own"
    assert not list((results / "runs" / "t" / distributed.RENDEZVOUS_DIR).glob("*"))
