"""Tables from run records: the summary per label and batch size, the divergence table, and the
Markdown/LaTeX rendering every table of normlab (claims and papers included) shares.

Every mean is shown with its 95 % interval (``63.0 [54.0, 72.0]``), every rate with its Wilson
interval, and each table's caption says so.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from normlab import stats
from normlab.plots.runs import (
    SETTING_KEYS,
    column_of,
    fmt,
    missing,
    order,
    prepare_runs,
    run_metrics,
    varied_keys,
    with_setting,
)

SUMMARY_METRICS = (
    "val_acc_eval",
    "val_acc_train_mode",
    "gap_train_minus_eval",
    "kl_train_eval",
    "best_val_acc_eval",
)
# Summary columns added only when some run recomputed precise statistics (eval.precise_bn).
PRECISE_METRICS = ("val_acc_precise", "precise_seconds")
PERCENT = {
    "val_acc_eval",
    "val_acc_train_mode",
    "gap_train_minus_eval",
    "best_val_acc_eval",
    "r_clip_frac",
    "d_clip_frac",
    "val_acc_precise",
    "precise_minus_eval",
}
LABELS = {
    "val_acc_eval": "held-out accuracy (%)",
    "val_acc_train_mode": "held-out acc., train mode (%)",
    "gap_train_minus_eval": "train − eval mode acc. (pp)",
    "kl_train_eval": "KL(train ‖ eval mode) (nats)",
    "best_val_acc_eval": "best held-out accuracy (%)",
    "mean_shift": "mean shift |μ_B − μ| / σ",
    "std_ratio": "std ratio σ_B / σ",
    "loss": "training loss",
    "param_norm": "parameter norm ‖θ‖",
    "prenorm_bias_norm": "pre-norm bias norm ‖b‖",
    "prenorm_mean_rms": "pre-norm mean drift (RMS of μ_B)",
    "r_clip_frac": "r clipped (% of channels)",
    "d_clip_frac": "d clipped (% of channels)",
    "val_acc_precise": "held-out acc., precise stats (%)",
    "precise_minus_eval": "precise − EMA stats acc. (pp)",
    "precise_seconds": "precise-BN time per eval. (s)",
}
DIVERGED_TEXT = (
    "'diverged': runs whose loss blew up, of all runs, with the 95 % Wilson interval of the "
    "rate; 'param-norm growth': runs whose parameter norm passed its growth factor "
    "(scale-invariant weights grow under normalization; not by itself a blow-up)"
)


def scale_of(metric: str) -> float:
    return 100.0 if metric in PERCENT else 1.0


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
        scale, digits = (100.0, 1) if metric in PERCENT else (1.0, 3)
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


# ----------------------------------------------------------------------------- rendering


def to_markdown(shown: pd.DataFrame, left: int, caption: str) -> str:
    """A caption and a pipe table; the first ``left`` columns left-aligned, the rest right."""
    lines = [
        "| " + " | ".join(shown.columns) + " |",
        "|" + "|".join("---" if i < left else "---:" for i in range(len(shown.columns))) + "|",
    ]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in shown.to_numpy().tolist()]
    return caption + "\n\n" + "\n".join(lines) + "\n"


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def tex_escape(text: str) -> str:
    for char, escaped in (
        ("\\", r"\textbackslash{}"),
        ("&", r"\&"),
        ("%", r"\%"),
        ("_", r"\_"),
        ("#", r"\#"),
        ("‖", r"$\|$"),
        ("−", "$-$"),
        ("μ", r"$\mu$"),
        ("σ", r"$\sigma$"),
        ("–", "--"),
        ("≤", r"$\leq$"),
        ("≥", r"$\geq$"),
        ("×", r"$\times$"),
        ("±", r"$\pm$"),
        ("§", r"\S{}"),
    ):
        text = text.replace(char, escaped)
    return text


def to_latex(shown: pd.DataFrame, left: int, caption: str = "") -> str:
    """A booktabs ``tabular`` (needs ``\\usepackage{booktabs}``), the caption as a comment."""
    spec = "l" * left + "r" * (len(shown.columns) - left)
    lines = [f"% {caption}"] if caption else []
    lines += [
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        " & ".join(tex_escape(str(c)) for c in shown.columns) + r" \\",
        r"\midrule",
    ]
    for row in shown.to_numpy().tolist():
        lines.append(" & ".join(tex_escape(str(c)) for c in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def write_table(
    table: pd.DataFrame, shown: pd.DataFrame, stem: Path, caption: str, left: int
) -> list[Path]:
    """``stem``.md and .tex (``shown``, the text) and .csv (``table``, the numbers)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".md"), stem.with_suffix(".tex"), stem.with_suffix(".csv")]
    paths[0].write_text(to_markdown(shown, left, caption), encoding="utf-8")
    paths[1].write_text(to_latex(shown, left, caption), encoding="utf-8")
    table.to_csv(paths[2], index=False, float_format="%.6g", lineterminator="\n")
    return paths
