"""Which run records are used, and the columns that group them: the results layer the figures,
tables and claims share. Imports neither torch nor matplotlib.

- Only finished runs (:data:`normlab.records.FINISHED`: ``completed`` and ``diverged``) are
  used; the others are reported by :func:`skipped_runs`. A run recorded in two sweeps (same run
  id) counts once.
- A run is drawn under its ``norm_label`` (written where its mode is built; the loader fills it
  for older records). ``statistics_batch_size`` is the number of examples behind each batch
  statistic. Nothing here looks at mode names.
- Runs are grouped by label, batch size and every key of :data:`normlab.records.SETTING_KEYS`
  that the results vary (:func:`with_setting`; a figure may pass a subset).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from normlab.records import FINISHED, NOT_SETTING_PREFIXES, SETTING_KEYS
from normlab.results import load_metrics

USED_STATUSES = FINISHED
SKIP_REASONS = {
    "incomplete": "killed before finishing",
    "running": "still running",
    "interrupted": "stopped by a signal before the last step; resume them to finish",
    "failed": "stopped by an error; see their summary.json",
}
EMPTY_COLUMNS = ["run_dir", "mode", "batch_size", "statistics_batch_size", "seed", "diverged"]
CHANCE = 0.1  # accuracy at chance over 10 classes, where a record does not say how many
CLASS_COLUMNS = ("num_classes", "config.data.num_classes")


# ----------------------------------------------------------------------------- runs


def skipped_runs(runs: pd.DataFrame) -> list[str]:
    """One message per status that keeps runs out of the figures, naming the runs."""
    if runs.empty:
        return []
    messages = []
    for status in sorted(set(runs["status"]) - set(USED_STATUSES)):
        names = sorted(
            f"{s}/{r}"
            for s, r in runs.loc[runs["status"] == status, ["sweep", "run_id"]].to_numpy()
        )
        listed = ", ".join(names[:5]) + (" ..." if len(names) > 5 else "")
        reason = SKIP_REASONS.get(status, "unknown status")
        plural = "s" if len(names) > 1 else ""
        messages.append(f"skipping {len(names)} {status} run{plural} ({reason}): {listed}")
    unreadable = runs.loc[runs["status"].isin(USED_STATUSES) & ~_has_config(runs), "run_dir"]
    if len(unreadable):
        messages.append(
            f"skipping {len(unreadable)} run(s) whose config.yaml lacks norm.mode "
            f"or batch_size: {', '.join(sorted(unreadable)[:5])}"
        )
    usable = runs.loc[_usable(runs)].sort_values("run_dir", kind="stable")
    repeated = usable.loc[usable["run_id"].duplicated(keep="first")]
    if len(repeated):
        names = [f"{s}/{r}" for s, r in repeated[["sweep", "run_id"]].to_numpy()]
        messages.append(
            f"skipping {len(repeated)} repeated run(s): the same run id (config and seed) is "
            f"already recorded in another sweep: {', '.join(names[:5])}"
        )
    return messages


def prepare_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs used (completed or diverged), with the columns they group by: ``mode`` (the
    run's label), ``batch_size``, ``statistics_batch_size``, ``seed``, ``diverged``,
    ``statistics_sub_batch`` (the statistics batch size where it is below the batch size, else
    null), ``param_growth`` (the parameter norm passed its growth factor), ``momentum_kind``,
    ``sampler``."""
    if runs.empty or "status" not in runs:
        return pd.DataFrame(columns=EMPTY_COLUMNS)
    used = runs.loc[_usable(runs)].sort_values("run_dir", kind="stable")
    used = used.drop_duplicates("run_id", keep="first").reset_index(drop=True)
    labels = column_of(used, "norm_label")
    used["mode"] = labels.where(labels.notna(), column_of(used, "config.norm.mode")).astype(str)
    used["batch_size"] = pd.to_numeric(column_of(used, "config.batch_size")).astype("int64")
    statistics = pd.to_numeric(column_of(used, "statistics_batch_size"), errors="coerce")
    used["statistics_batch_size"] = statistics.fillna(used["batch_size"]).astype("int64")
    sub_batch = used["statistics_batch_size"] < used["batch_size"]
    used["statistics_sub_batch"] = used["statistics_batch_size"].where(sub_batch).astype(object)
    used["seed"] = column_of(used, "config.seed")
    used["diverged"] = used["status"] == "diverged"
    growth = pd.to_numeric(column_of(used, "param_norm_growth_step"), errors="coerce")
    used["param_growth"] = growth.notna()
    used["momentum_kind"] = column_of(used, "config.momentum.kind", "constant").astype(object)
    used["sampler"] = column_of(used, "config.data.sampler", "iid").astype(object)
    return used


def _has_config(runs: pd.DataFrame) -> pd.Series:
    mode = column_of(runs, "config.norm.mode").notna() | column_of(runs, "norm_label").notna()
    return mode & column_of(runs, "config.batch_size").notna()


def _usable(runs: pd.DataFrame) -> pd.Series:
    return runs["status"].isin(USED_STATUSES) & _has_config(runs)


def chance(runs: pd.DataFrame) -> pd.Series:
    """Each run's chance accuracy: ``1 / num_classes`` where its record has it, else 0.1."""
    out = pd.Series(CHANCE, index=runs.index, dtype=float)
    for column in reversed(CLASS_COLUMNS):
        classes = pd.to_numeric(column_of(runs, column), errors="coerce")
        out = out.where(~(classes > 0), 1.0 / classes)
    return out


def scored_accuracy(runs: pd.DataFrame, metric: str) -> pd.Series:
    """Final ``metric`` of each prepared run, a diverged run's at its chance accuracy: a
    failure counts as the worst outcome, never as no evidence."""
    values = pd.to_numeric(column_of(runs, metric), errors="coerce").astype(float)
    return values.where(~runs["diverged"].astype(bool), chance(runs))


def varied_keys(runs: pd.DataFrame, keys: Sequence[str]) -> list[str]:
    """The keys among ``keys`` that take more than one (non-null) value in ``runs``."""
    return [k for k in keys if k in runs and runs[k].dropna().astype(str).nunique() > 1]


def with_setting(
    runs: pd.DataFrame,
    exclude: Sequence[str] = (),
    setting_keys: Mapping[str, str] = SETTING_KEYS,
) -> pd.DataFrame:
    """Add ``setting`` (``"lr=0.01, depth=10"``: the varied ``setting_keys``, "" if none) and
    ``setting_order`` (settings sorted by value, numbers numerically)."""
    out = runs.copy()
    keys = varied_keys(out, [k for k in setting_keys if k not in exclude])
    if not keys or out.empty:
        out["setting"], out["setting_order"] = "", 0
        return out
    values = list(zip(*(out[k] for k in keys), strict=True))
    out["setting"] = [
        ", ".join(
            f"{setting_keys[k]}={fmt(v)}" for k, v in zip(keys, row, strict=True) if not missing(v)
        )
        for row in values
    ]
    # ranked by value; keyed by text so that NaN, None and 3 vs 3.0 compare as they print
    sort_keys = {tuple(map(fmt, row)): tuple(map(sort_key, row)) for row in values}
    rank = {key: i for i, key in enumerate(sorted(sort_keys, key=sort_keys.__getitem__))}
    out["setting_order"] = [rank[tuple(map(fmt, row))] for row in values]
    return out


def pooled_keys(runs: pd.DataFrame) -> list[str]:
    """Config keys that vary between runs the figures put in one group (and so average over)."""
    runs = with_setting(prepare_runs(runs))
    candidates = [
        c
        for c in runs.columns
        if c.startswith("config.")
        and c not in SETTING_KEYS
        and not c.startswith(NOT_SETTING_PREFIXES)
    ]
    groups = runs.groupby(["mode", "batch_size", "setting"], dropna=False)
    return [c for c in candidates if (groups[c].agg(lambda s: s.astype(str).nunique()) > 1).any()]


GROUP_COLUMNS = [  # what each logged row carries of its run
    "run_dir",
    "mode",
    "batch_size",
    "statistics_batch_size",
    "seed",
    "diverged",
    "setting",
    "setting_order",
    "momentum_kind",
    "sampler",
    "divergence_step",
]


def run_metrics(
    runs: pd.DataFrame, metrics: pd.DataFrame | None = None, exclude: Sequence[str] = ()
) -> pd.DataFrame:
    """Every logged row of the used runs, with their grouping columns (:func:`with_setting`)."""
    used = with_setting(prepare_runs(runs), exclude)
    if metrics is None:
        metrics = load_metrics(runs=used, config_keys=("run_dir",))
    per_run = used.reindex(columns=GROUP_COLUMNS)
    if "run_dir" in metrics:
        on = ["run_dir"]
    else:
        per_run = per_run.assign(sweep=used.get("sweep"), run_id=used.get("run_id"))
        on = ["sweep", "run_id"]
    drop = [c for c in per_run.columns if c in metrics and c not in on]
    merged = metrics.drop(columns=drop).merge(per_run, on=on, how="inner")
    return merged.sort_values(["run_dir", "step"], kind="stable").reset_index(drop=True)


def order(
    frame: pd.DataFrame, by: Sequence[str] = (), rank: Callable[[str], Any] | None = None
) -> pd.DataFrame:
    """Labels by ``rank`` (a sort key of a label; by name when none), settings by value, then
    ``by``; drops ``setting_order``."""
    keyed = frame.assign(_label=frame["mode"].map(rank) if rank is not None else frame["mode"])
    keys = ["_label", *(["setting_order"] if "setting_order" in frame else []), *by]
    keyed = keyed.sort_values(keys, kind="stable").drop(columns=["_label"])
    return keyed.drop(columns=["setting_order"], errors="ignore").reset_index(drop=True)


def settings_of(used: pd.DataFrame) -> list[str]:
    """The distinct ``setting`` values of ``used``, by value."""
    return list(dict.fromkeys(used.sort_values("setting_order", kind="stable")["setting"]))


# ----------------------------------------------------------------------------- helpers


def column_of(frame: pd.DataFrame, key: str, default: Any = None) -> pd.Series:
    if key in frame:
        return frame[key]
    return pd.Series([default] * len(frame), index=frame.index, dtype=object)


def missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def fmt(value: Any) -> str:
    if missing(value):
        return "–"
    if isinstance(value, float | np.floating):
        return f"{value:g}"
    if isinstance(value, np.integer):
        return str(int(value))
    return str(value)


def sort_key(value: Any) -> tuple[int, float, str]:
    if missing(value):
        return (2, 0.0, "")
    if isinstance(value, bool | np.bool_):
        return (1, 0.0, str(value))
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(value))


def finite(values: pd.Series) -> np.ndarray:
    array = pd.to_numeric(values, errors="coerce").to_numpy(float)
    return np.where(np.isfinite(array), array, np.nan)
