"""This machine's runs beside a reference set of the same study (``normlab-plot LOCAL --beside
COMMITTED``): does a rerun reproduce the committed numbers, within their intervals?

Floating-point results differ across CPUs, so a rerun elsewhere is not bit-identical; what
should hold is that each cell's mean on this machine lies inside the committed 95 % interval,
and that the per-seed differences (same seeds, same configs) average to an interval holding 0.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from normlab import stats
from normlab.grouping import prepare_runs, with_setting
from normlab.plots.draw import log2_axis
from normlab.plots.runs import Skip, order
from normlab.plots.style import new_figure, palette, styled
from normlab.tables import to_markdown

KEYS = ["mode", "batch_size", "setting"]
METRIC = "val_acc_eval"
SIDE = "reproduction_side"  # which of the two sets a run belongs to, while they are labelled
# what each side's records say of where they came from (normlab.provenance, the trainer)
ORIGINS = {
    "commit": "commit",
    "dirty": "code changed since the commit",
    "cpu": "CPU",
    "device": "device",
    "threads": "threads",
    "versions.torch": "torch",
    "versions.numpy": "numpy",
    "versions.hydra-core": "hydra-core",
    "versions.pandas": "pandas",
}


def _final(runs: pd.DataFrame) -> pd.DataFrame:
    used = with_setting(prepare_runs(runs))
    return used.assign(value=pd.to_numeric(used.get(METRIC), errors="coerce"))


def _finals(local: pd.DataFrame, reference: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both sets' final accuracies, their settings labelled over the two together: a key that
    varies in either names the setting in both, so a rerun of part of a sweep (without the
    cells of another preset that grew it) still meets its cells."""
    if local.empty or reference.empty:
        return _final(local), _final(reference)
    sides = [
        runs.assign(**{SIDE: side, "run_id": f"{side}:" + runs["run_id"].astype(str)})
        for side, runs in (("local", local), ("reference", reference))
    ]
    both = _final(pd.concat(sides, ignore_index=True))
    return both.loc[both[SIDE] == "local"], both.loc[both[SIDE] == "reference"]


def reproduction_frame(local: pd.DataFrame, reference: pd.DataFrame) -> pd.DataFrame:
    """Per (label, batch size, setting) present in both: each set's mean final accuracy and
    95 % interval over its non-diverged seeds, their diverged counts, the per-seed difference
    (this machine minus the reference) with its interval, and ``within``: whether this machine's
    mean lies inside the reference interval, or every seed diverged on both sides (the same
    outcome, with no accuracy to compare)."""
    mine, theirs = _finals(local, reference)
    rows = []
    for key, group in mine.groupby(KEYS, sort=False):
        other = theirs.loc[(theirs[KEYS] == pd.Series(key, index=KEYS)).all(axis=1)]
        if other.empty:
            continue
        kept, kept_other = group.loc[~group["diverged"]], other.loc[~other["diverged"]]
        here, there = stats.mean_interval(kept["value"]), stats.mean_interval(kept_other["value"])
        difference = stats.paired_difference(
            kept.set_index("seed")["value"], kept_other.set_index("seed")["value"]
        )
        rows.append(
            {
                **dict(zip(KEYS, key, strict=True)),
                "setting_order": group["setting_order"].iloc[0],
                "reference_mean": there.estimate,
                "reference_low": there.low,
                "reference_high": there.high,
                "reference_diverged": f"{int(other['diverged'].sum())}/{len(other)}",
                "mean": here.estimate,
                "low": here.low,
                "high": here.high,
                "diverged": f"{int(group['diverged'].sum())}/{len(group)}",
                "difference": difference.estimate,
                "difference_low": difference.low,
                "difference_high": difference.high,
                "within": _all_diverged(group, other)
                or (there.defined and there.low <= here.estimate <= there.high),
            }
        )
    return order(pd.DataFrame(rows), ["batch_size"]) if rows else pd.DataFrame(rows)


def _all_diverged(*groups: pd.DataFrame) -> bool:
    return all(bool(g["diverged"].all()) for g in groups)


def _interval(mean: float, low: float, high: float) -> str:
    return stats.Interval(mean, low, high, 2, "t").text(scale=100.0)


def reproduction_markdown(frame: pd.DataFrame) -> str:
    shown = pd.DataFrame(
        {
            "mode": frame["mode"],
            "batch size": frame["batch_size"].astype(str),
            **({"setting": frame["setting"]} if frame["setting"].astype(bool).any() else {}),
            "committed accuracy (%)": [
                _interval(*r)
                for r in frame[["reference_mean", "reference_low", "reference_high"]].to_numpy()
            ],
            "this machine (%)": [_interval(*r) for r in frame[["mean", "low", "high"]].to_numpy()],
            "difference, paired by seed (pp)": [
                _interval(*r)
                for r in frame[["difference", "difference_low", "difference_high"]].to_numpy()
            ],
            "diverged (committed / here)": frame["reference_diverged"] + " / " + frame["diverged"],
            "within the committed interval": frame["within"].map({True: "yes", False: "no"}),
        }
    )
    inside, total = int(frame["within"].sum()), len(frame)
    caption = (
        f"This machine's runs beside the committed ones: final held-out accuracy, mean and "
        f"{stats.describe()} over non-diverged seeds; {inside} of {total} cells have this "
        "machine's mean inside the committed interval."
    )
    left = 3 if "setting" in shown else 2
    return to_markdown(shown, left, caption)


def origins_markdown(local: pd.DataFrame, reference: pd.DataFrame) -> str:
    """Where each side's runs came from: every distinct value its records hold, per origin
    field (:data:`ORIGINS`); "not recorded" for records older than the field."""
    sides = {"committed": reference, "this machine": local}
    rows = {
        label: [_distinct(runs, key) for runs in sides.values()] for key, label in ORIGINS.items()
    }
    shown = pd.DataFrame([[label, *values] for label, values in rows.items()], columns=["", *sides])
    return to_markdown(shown, 3, "Where the runs came from: the values their records hold.")


def _distinct(runs: pd.DataFrame, key: str) -> str:
    if key not in runs.columns:
        return "not recorded"
    values = runs[key].dropna()
    if values.empty:
        return "not recorded"
    shown = sorted({str(v)[:12] if key == "commit" else str(v) for v in values})
    return ", ".join(shown)


def write_reproduction(
    frame: pd.DataFrame, out: Path, local: pd.DataFrame, reference: pd.DataFrame
) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "reproduction.md", out / "reproduction.csv"]
    text = reproduction_markdown(frame) + "\n" + origins_markdown(local, reference)
    paths[0].write_text(text, encoding="utf-8")
    frame.to_csv(paths[1], index=False, float_format="%.6g", lineterminator="\n")
    return paths


@styled
def plot_reproduction(frame: pd.DataFrame) -> Figure:
    """Final accuracy vs batch size from :func:`reproduction_frame`'s ``frame``: the committed
    intervals as bands, this machine's means and intervals as markers, a colour per label."""
    if frame.empty:
        raise Skip("no cell of these runs is in the reference runs")
    figure, axes = new_figure(1)
    ax = axes.flat[0]
    colours = palette(frame["mode"])
    for (mode, _setting), line in frame.groupby(["mode", "setting"], sort=False):
        style = colours[mode]
        x = line["batch_size"].to_numpy(float)
        ax.fill_between(
            x,
            line["reference_low"].to_numpy(float) * 100,
            line["reference_high"].to_numpy(float) * 100,
            color=style.color,
            alpha=0.2,
            linewidth=0,
        )
        ax.plot(x, line["reference_mean"].to_numpy(float) * 100, color=style.color, linewidth=0.8)
        error = np.vstack(
            [
                (line["mean"] - line["low"]).to_numpy(float) * 100,
                (line["high"] - line["mean"]).to_numpy(float) * 100,
            ]
        )
        ax.errorbar(
            x,
            line["mean"].to_numpy(float) * 100,
            yerr=np.where(np.isfinite(error), error, 0.0),
            color=style.color,
            marker=style.marker,
            linestyle="",
            capsize=2,
            label=mode,
        )
    log2_axis(ax, frame["batch_size"])
    ax.set_xlabel("batch size (examples per step)")
    ax.set_ylabel("held-out accuracy (%)")
    inside = int(frame["within"].sum())
    ax.set_title(f"this machine (markers) vs committed (bands): {inside}/{len(frame)} inside")
    ax.legend(loc="best", fontsize=6)
    if math.isnan(frame["mean"].max()):
        raise Skip("this machine's runs have no final accuracy")
    return figure
