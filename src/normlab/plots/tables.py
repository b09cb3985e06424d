"""Tables from run records: the summary per label and batch size, and the divergence table
(rendered by :mod:`normlab.tables`).

Every mean is shown with its 95 % interval (``63.0 [54.0, 72.0]``), every rate with its Wilson
interval, and each table's caption says so.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from normlab import quantities, stats
from normlab.grouping import (
    column_of,
    fmt,
    missing,
    prepare_runs,
    run_metrics,
    varied_keys,
    with_setting,
)
from normlab.plots.runs import order
from normlab.quantities import LABELS
from normlab.records import SETTING_KEYS
from normlab.tables import write_table

SUMMARY_METRICS = quantities.SUMMARY
# Summary columns added only when some run recomputed precise statistics (eval.precise_bn).
PRECISE_METRICS = quantities.SUMMARY_PRECISE
DIVERGED_TEXT = (
    "'diverged': runs whose loss blew up, of all runs, with the 95 % Wilson interval of the "
    "rate; 'param-norm growth': runs whose parameter norm passed its growth factor "
    "(scale-invariant weights grow under normalization; not by itself a blow-up)"
)


def mean_caption() -> str:
    return f"mean [{stats.describe()}] over the seeds that did not diverge"


# ----------------------------------------------------------------------------- summary


def summary_table(runs: pd.DataFrame, metrics: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per (label, batch size, varied settings): ``n`` runs, ``n_diverged`` and the rate
    ``diverged_frac`` with its Wilson interval (``diverged_low``/``_high``), ``n_param_growth``,
    and ``<metric>_mean``/``_low``/``_high`` of :data:`SUMMARY_METRICS` over non-diverged
    seeds; also of :data:`PRECISE_METRICS` when some run logged ``val_acc_precise`` (groups
    without it get NaN). ``precise_seconds`` is each run's mean over its evaluations, read from
    ``metrics`` (every logged row, as for :func:`run_metrics`; loaded when not given)."""
    used = with_setting(prepare_runs(runs))
    settings = varied_keys(used, list(SETTING_KEYS))
    names = list(SUMMARY_METRICS)
    if pd.to_numeric(column_of(used, "val_acc_precise"), errors="coerce").notna().any():
        names += PRECISE_METRICS
        used["precise_seconds"] = used["run_dir"].map(
            _mean_per_run(runs, metrics, "precise_seconds")
        )
    rows = []
    for _, group in used.groupby(["mode", "setting", "setting_order", "batch_size"], sort=False):
        rows.append(_summary_row(group, settings, names))
    columns = [
        "mode",
        "batch_size",
        "setting_order",
        *(SETTING_KEYS[k] for k in settings),
        "n",
        "n_diverged",
        "diverged_frac",
        "diverged_low",
        "diverged_high",
        "n_param_growth",
        *(f"{m}_{s}" for m in names for s in ("mean", "low", "high")),
    ]
    return order(pd.DataFrame(rows, columns=columns), ["batch_size"])


def _summary_row(group: pd.DataFrame, settings: list[str], names: list[str]) -> dict:
    first = group.iloc[0]
    row = {k: first[k] for k in ("mode", "batch_size", "setting_order")}
    row.update({SETTING_KEYS[k]: first[k] for k in settings})
    kept = group.loc[~group["diverged"]]
    for metric in names:
        interval = stats.mean_interval(kept.get(metric, []))
        row[f"{metric}_mean"], row[f"{metric}_low"] = interval.estimate, interval.low
        row[f"{metric}_high"] = interval.high
    k, n = int(group["diverged"].sum()), len(group)
    rate = stats.wilson_interval(k, n)
    row.update(
        n=n,
        n_diverged=k,
        diverged_frac=rate.estimate,
        diverged_low=rate.low,
        diverged_high=rate.high,
        n_param_growth=int(group["param_growth"].sum()),
    )
    return row


def _mean_per_run(runs: pd.DataFrame, metrics: pd.DataFrame | None, metric: str) -> pd.Series:
    """Each used run's mean of the finite logged values of ``metric``, by ``run_dir``."""
    rows = run_metrics(runs, metrics)
    if metric not in rows:
        return pd.Series(dtype=float)
    values = pd.to_numeric(rows[metric], errors="coerce")
    return values.where(values.abs() < float("inf")).groupby(rows["run_dir"]).mean()


def interval_text(mean: float, low: float, high: float, scale: float, digits: int) -> str:
    return stats.Interval(mean, low, high, 0, "").text(scale, digits)


def rate_text(k: int, n: int, low: float, high: float) -> str:
    """``"1/3 (6–79 %)"``: k of n runs and the Wilson interval of the rate in %."""
    if missing(low):
        return f"{k}/{n}"
    return f"{k}/{n} ({100 * low:.0f}–{100 * high:.0f} %)"


def summary_display(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` as text: accuracies and gaps in %, ``mean [low, high]``, rates as ``k/n``."""
    out = pd.DataFrame(index=table.index)
    out["mode"] = table["mode"].astype(str)
    out["batch size"] = table["batch_size"].astype(str)
    for column in SETTING_KEYS.values():
        if column in table:
            out[column] = table[column].map(fmt)
    for metric in (*SUMMARY_METRICS, *PRECISE_METRICS):
        if f"{metric}_mean" not in table:
            continue
        scale = quantities.scale_of(metric)
        digits = 1 if scale != 1.0 else 3
        out[LABELS[metric]] = [
            interval_text(m, lo, hi, scale, digits)
            for m, lo, hi in zip(
                table[f"{metric}_mean"],
                table[f"{metric}_low"],
                table[f"{metric}_high"],
                strict=True,
            )
        ]
    out["diverged"] = _rates(table, "n_diverged", "diverged_low", "diverged_high")
    out["param-norm growth"] = [
        f"{k}/{n}" for k, n in zip(table["n_param_growth"], table["n"], strict=True)
    ]
    return out


def _rates(table: pd.DataFrame, count: str, low: str, high: str) -> list[str]:
    return [
        rate_text(k, n, lo, hi)
        for k, n, lo, hi in zip(table[count], table["n"], table[low], table[high], strict=True)
    ]


def _left_columns(shown: pd.DataFrame) -> int:
    """Mode, batch size and the setting columns: the left-aligned ones."""
    return 2 + sum(c in SETTING_KEYS.values() for c in shown.columns)


def summary_caption() -> str:
    return f"Final metrics, {mean_caption()}; {DIVERGED_TEXT}."


def write_summary(table: pd.DataFrame, out: Path) -> list[Path]:
    shown = summary_display(table)
    return write_table(table, shown, out / "summary", summary_caption(), _left_columns(shown))


# ----------------------------------------------------------------------------- divergence


def divergence_display(table: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame(index=table.index)
    out["mode"] = table["mode"].astype(str)
    if (table["setting"] != "").any():
        out["setting"] = table["setting"].astype(str)
    out["batch size"] = table["batch_size"].astype(str)
    out["diverged"] = _rates(table, "n_diverged", "low", "high")
    out["param-norm growth"] = [
        f"{k}/{n}" for k, n in zip(table["n_param_growth"], table["n"], strict=True)
    ]
    out["first divergence step"] = table["first_divergence_step"].map(
        lambda v: "–" if missing(v) else str(int(v))
    )
    out["signals"] = table["signals"].map(lambda s: s or "–")
    return out


def write_divergence(table: pd.DataFrame, out: Path) -> list[Path]:
    shown = divergence_display(table)
    caption = f"Divergence per setting; {DIVERGED_TEXT}."
    left = 3 if "setting" in shown else 2
    numbers = table.drop(columns=["setting_order"], errors="ignore")
    return write_table(numbers, shown, out / "divergence", caption, left)


def has_divergence(table: pd.DataFrame) -> bool:
    return bool(len(table)) and bool((table[["n_diverged", "n_param_growth"]].sum() > 0).any())
