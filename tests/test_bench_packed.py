"""bench_packed's workers, in-process and tiny: each way of training a cell's or a setting's
seeds (one pack of every mode, one pack per mode, one seed after another) runs its timed steps
with no evaluation among them and reports its seconds."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import bench_packed
from conftest import CACHE


@pytest.mark.parametrize("kind", ["packed", "bymode", "alone"])
def test_each_worker_times_its_steps(kind, capsys):
    args = argparse.Namespace(
        worker=kind, model="mlp", batch=4, worker_seeds="0,1", threads=1, steps=3, warmup=1,
        device="cpu", cache=str(CACHE), modes="batch,renorm,group", data="mnist1d",
    )  # fmt: skip
    bench_packed.worker(args)
    seconds = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["seconds"]
    assert seconds > 0
