"""normlab-plot LOCAL --beside COMMITTED: a rerun's numbers beside the committed ones, with
every expected number worked out by hand from the records written here."""

from __future__ import annotations

import pytest
from records import norm_node, write_record

from normlab.plots import main as plot
from normlab.plots.reproduction import reproduction_frame
from normlab.results import load_runs

# (mode, batch size, seed) -> final val_acc_eval, committed and on "this machine"
COMMITTED = {
    ("batch", 4, 0): 0.60,
    ("batch", 4, 1): 0.62,
    ("batch", 4, 2): 0.64,
    ("batch", 32, 0): 0.80,
    ("batch", 32, 1): 0.82,
}
HERE = {
    ("batch", 4, 0): 0.61,
    ("batch", 4, 1): 0.63,
    ("batch", 4, 2): 0.65,
    ("batch", 32, 0): 0.90,
    ("batch", 32, 1): 0.92,
    ("batch", 8, 0): 0.7,
}


def _write(root, values, momentum=None):
    """``None`` for a run that diverged; ``momentum``: (mode, batch size, seed) -> the kind of
    momentum schedule of that run, where given."""
    for (mode, size, seed), accuracy in values.items():
        config = {
            "norm": norm_node(mode),
            "batch_size": size,
            "seed": seed,
            "data": {"name": "mnist1d", "sampler": "iid"},
            "model": {"name": "mlp"},
        }
        if momentum and (mode, size, seed) in momentum:
            config["momentum"] = {"kind": momentum[(mode, size, seed)]}
        summary = {
            "status": "completed" if accuracy is not None else "diverged",
            "norm": mode,
            "norm_label": mode,
            "batch_size": size,
            "seed": seed,
            "final": {"val_acc_eval": 0.1 if accuracy is None else accuracy},
        }
        last = {"val_acc_eval": 0.1 if accuracy is None else accuracy}
        if accuracy is None:
            last["loss"] = float("inf")
        rows = [{"step": 0, "val_acc_eval": 0.1}, {"step": 10, **last}]
        kind = (momentum or {}).get((mode, size, seed), "")
        write_record(root, "quick", f"{mode}-bs{size}-s{seed}{kind}", config, summary, rows)
    return root / "runs" / "quick"


def test_each_cell_beside_its_committed_interval(tmp_path):
    committed = load_runs(_write(tmp_path / "committed", COMMITTED))
    here = load_runs(_write(tmp_path / "here", HERE))
    frame = reproduction_frame(here, committed).set_index("batch_size")
    assert list(frame.index) == [4, 32], "batch 8 has no committed cell"
    # batch 4: committed 0.62 ± t(0.975, 2) * 0.02 / sqrt(3) = 0.62 ± 4.303 * 0.011547
    half = 4.302653 * 0.02 / 3**0.5
    assert frame.loc[4, "reference_low"] == pytest.approx(0.62 - half)
    assert frame.loc[4, "mean"] == pytest.approx(0.63) and bool(frame.loc[4, "within"])
    assert frame.loc[4, "difference"] == pytest.approx(0.01)
    # batch 32: committed 0.81 ± 12.706 * 0.01414 / sqrt(2) = 0.81 ± 0.127: 0.91 is inside
    assert frame.loc[32, "reference_high"] == pytest.approx(
        0.81 + 12.7062 * 0.0141421 / 2**0.5, rel=1e-4
    )
    assert bool(frame.loc[32, "within"])
    assert frame.loc[32, "difference"] == pytest.approx(0.10)


def test_a_cell_whose_seeds_all_diverged_on_both_sides_reproduces(tmp_path):
    failed = {("renorm", 1, s): None for s in range(3)}
    once = {**failed, ("renorm", 2, 0): None, ("renorm", 2, 1): None, ("renorm", 2, 2): None}
    twice = {**failed, ("renorm", 2, 0): 0.5, ("renorm", 2, 1): 0.52, ("renorm", 2, 2): None}
    committed = load_runs(_write(tmp_path / "committed", once))
    here = load_runs(_write(tmp_path / "here", twice))
    frame = reproduction_frame(here, committed).set_index("batch_size")
    assert bool(frame.loc[1, "within"]) and frame.loc[1, "diverged"] == "3/3"
    assert not bool(frame.loc[2, "within"])  # 1/3 diverged here, 3/3 committed


def test_a_rerun_of_part_of_a_sweep_meets_its_cells(tmp_path):
    """The committed sweep also holds runs of another momentum schedule (another preset grew
    it), so there its batch-4 cell is labelled momentum=constant; the rerun has only constant
    momentum and still meets that cell, not the cumulative one."""
    constant = {key: "constant" for key in COMMITTED}
    cumulative = {("batch", 4, s): 0.30 for s in range(3)}
    committed = load_runs(
        _write(
            tmp_path / "committed",
            {**COMMITTED, **{(m, b, s + 10): v for (m, b, s), v in cumulative.items()}},
            {**constant, **{(m, b, s + 10): "cumulative" for (m, b, s) in cumulative}},
        )
    )
    here = load_runs(_write(tmp_path / "here", HERE, {key: "constant" for key in HERE}))
    frame = reproduction_frame(here, committed).set_index("batch_size")
    assert list(frame.index) == [4, 32] and set(frame["setting"]) == {"momentum=constant"}
    assert frame.loc[4, "reference_mean"] == pytest.approx(0.62)  # the three constant seeds


def test_the_cli_writes_the_table_and_the_figure(tmp_path, capsys):
    committed = _write(tmp_path / "committed", COMMITTED)
    here = _write(tmp_path / "here", HERE)
    out = tmp_path / "figures"
    assert plot([str(here), "--beside", str(committed), "--out", str(out)]) == 0
    text = (out / "reproduction.md").read_text()
    assert "2 of 2 cells have this machine's mean inside the committed interval" in text
    assert (out / "reproduction.png").exists()
    assert "2 of 2 cells inside the committed intervals" in capsys.readouterr().out
