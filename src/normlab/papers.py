"""The published numbers behind the claims, each with its source, and a table that puts each
paper's effect beside the harness's for direction and size.

Every effect is in accuracy points in the direction of its claim (:mod:`normlab.claims`), so
that a positive number means what the claim says: errors are turned into accuracies
(``accuracy = 100 − error``) before differences are taken.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from normlab.tables import write_table

GN_SOURCE = "Wu & He 2018 (arXiv 1803.08494), Fig. 1"
BRN_SOURCE = "Ioffe 2017 (arXiv 1702.03275)"
RETHINKING_SOURCE = "Wu & Johnson 2021 (arXiv 2105.07576), Table 2"
MABN_SOURCE = "Yan et al. 2020 (arXiv 2001.06838), github.com/megvii-model/MABN README"
RESNET50 = "ResNet-50, ImageNet, top-1 error (%)"
INCEPTION = "Inception-v3, ImageNet, top-1 accuracy (%)"

# ResNet-50 ImageNet top-1 error by images per GPU (the batch each statistic comes from)
GN_ERROR = {
    "BN": {32: 23.6, 16: 23.7, 8: 24.8, 4: 27.3, 2: 34.7},
    "GN": {32: 24.1, 16: 24.2, 8: 24.0, 4: 24.2, 2: 24.1},
}
GN_REFERENCE = 32
# ResNet-50 ImageNet top-1 error at normalization batch 2 (SGD batch 32), and BN at 32: the
# authors' README prints accuracies (BN@32 76.59, BN 64.78, BRN 69.71, MABN 76.33); 100 − those
MABN_ERROR = {"BN@32": 23.41, "BN": 35.22, "BRN": 30.29, "MABN": 23.67}


@dataclass(frozen=True)
class Published:
    """One published comparison: ``first`` against ``second`` (label, value as printed) in
    ``metric``; ``effect`` in accuracy points in the claim's direction; ``batch_size`` the
    batch the harness's setting must have to stand beside it (None: any of the claim's)."""

    claim: str
    source: str
    metric: str
    setting: str
    first: tuple[str, float]
    second: tuple[str, float]
    effect: float
    batch_size: int | None = None

    def numbers(self) -> str:
        return f"{self.first[0]} {self.first[1]:g} vs {self.second[0]} {self.second[1]:g}"


def _gn_rows(bn_claim: str = "gn_bn_degrades", gn_claim: str = "gn_flat") -> list[Published]:
    """Fig. 1's comparisons: by batch size (one process) or by images per GPU at a fixed total
    batch (a data-parallel run's statistics batch), the paper's own setting."""
    rows = []
    for size in (16, 8, 4, 2):
        bn, gn = GN_ERROR["BN"], GN_ERROR["GN"]
        rows.append(
            Published(
                bn_claim,
                GN_SOURCE,
                RESNET50,
                f"BN, {GN_REFERENCE} vs {size} images per GPU",
                (f"BN@{GN_REFERENCE}", bn[GN_REFERENCE]),
                (f"BN@{size}", bn[size]),
                bn[size] - bn[GN_REFERENCE],  # acc(32) − acc(size) = err(size) − err(32)
                size,
            )
        )
        rows.append(
            Published(
                gn_claim,
                GN_SOURCE,
                RESNET50,
                f"GN, {size} vs {GN_REFERENCE} images per GPU",
                (f"GN@{size}", gn[size]),
                (f"GN@{GN_REFERENCE}", gn[GN_REFERENCE]),
                gn[GN_REFERENCE] - gn[size],  # acc(size) − acc(32)
                size,
            )
        )
    return rows


PUBLISHED: tuple[Published, ...] = (
    *_gn_rows(),
    *_gn_rows("gn_bn_per_gpu", "gn_flat_per_gpu"),
    Published(
        "brn_large_batch",
        BRN_SOURCE + ", Fig. 1",
        INCEPTION,
        "batch 32 per worker, i.i.d.",
        ("BRN", 78.5),
        ("BN", 78.3),
        78.5 - 78.3,
    ),
    Published(
        "brn_micro_batch",
        BRN_SOURCE + ", Fig. 2",
        INCEPTION,
        "micro-batches of 4",
        ("BRN", 76.5),
        ("BN", 74.2),
        76.5 - 74.2,
        4,
    ),
    Published(
        "brn_non_iid",
        BRN_SOURCE + ", Fig. 3",
        INCEPTION,
        "non-i.i.d.: 16 labels × 2 images per batch of 32",
        ("BRN", 78.5),
        ("BN", 67.0),
        78.5 - 67.0,
    ),
    Published(
        "mabn_small_batch",
        MABN_SOURCE,
        RESNET50,
        "normalization batch 2, SGD batch 32 (BRN 30.29, BN at 32: 23.41)",
        ("MABN", MABN_ERROR["MABN"]),
        ("BN", MABN_ERROR["BN"]),
        MABN_ERROR["BN"] - MABN_ERROR["MABN"],  # acc(MABN) − acc(BN) = err(BN) − err(MABN)
        2,
    ),
    Published(
        "rethinking_small",
        RETHINKING_SOURCE,
        RESNET50,
        "normalization batch 2",
        ("precise", 32.0),
        ("EMA", 35.5),
        35.5 - 32.0,  # acc(precise) − acc(EMA) = err(EMA) − err(precise)
        2,
    ),
    Published(
        "rethinking_large",
        RETHINKING_SOURCE,
        RESNET50,
        "normalization batch 32",
        ("precise", 23.5),
        ("EMA", 23.7),
        23.7 - 23.5,
        32,
    ),
)


# The harness's mode for each method of MABN_ERROR; MABN's is the mode the paper introduces.
MABN_MODES = {"BN": "batch", "BRN": "renorm", "MABN": "mabn"}
MABN_MODE = MABN_MODES["MABN"]
MABN_NORM_BATCH = 2  # of the MABN_ERROR keys without "@<batch>"


def mabn_rows() -> list[tuple[str, int, float]]:
    """``(method, normalization batch, top-1 error)`` for each number of :data:`MABN_ERROR`."""
    rows = []
    for key, error in MABN_ERROR.items():
        method, _, size = key.partition("@")
        rows.append((method, int(size) if size else MABN_NORM_BATCH, error))
    return rows


def _direction(paper: float, low: float, high: float) -> str:
    if not (low == low and high == high):  # no interval
        return "undecided (too few seeds)"
    if low <= 0 <= high:
        return "undecided (interval spans 0)"
    if paper == 0:
        return "harness finds an effect, the paper none"
    return "same" if (low > 0) == (paper > 0) else "opposite"


def beside_table(results: Sequence) -> pd.DataFrame:
    """One row per (published comparison, harness setting of its claim at the same batch
    size when the paper names one): both effects in accuracy points, the direction, and the
    harness's effect as a multiple of the paper's."""
    by_claim = {r.claim.key: r for r in results}
    rows = []
    for paper in PUBLISHED:
        result = by_claim.get(paper.claim)
        findings = [] if result is None else list(result.findings)
        if paper.batch_size is not None:
            findings = [f for f in findings if f.batch_size == paper.batch_size]
        base = {
            "claim": paper.claim,
            "paper": paper.source,
            "paper setting": f"{paper.metric}: {paper.setting}",
            "published": paper.numbers(),
            "paper effect (pp)": f"{paper.effect:+.1f}",
        }
        if not findings:
            needs = result.claim.needs if result is not None else "the claim's runs"
            rows.append({**base, "harness setting": f"not tested here (needs: {needs})"})
            continue
        for finding in findings:
            effect = finding.effect.scaled(100.0)
            rows.append(
                {
                    **base,
                    "harness setting": f"{finding.study}, {finding.setting}",
                    "harness effect (pp)": effect.text(1.0, 1),
                    "direction": _direction(paper.effect, effect.low, effect.high),
                    "size (harness ÷ paper)": _ratio(effect.estimate, paper.effect),
                }
            )
    columns = [
        "claim",
        "paper",
        "paper setting",
        "published",
        "paper effect (pp)",
        "harness setting",
        "harness effect (pp)",
        "direction",
        "size (harness ÷ paper)",
    ]
    return pd.DataFrame(rows).reindex(columns=columns).fillna("–")


def _ratio(harness: float, paper: float) -> str:
    if abs(paper) < 0.5 or harness != harness:
        return "–"  # a ratio to an effect under half a point says nothing
    return f"{harness / paper:.2f}"


CAPTION = (
    "Published effects beside the harness's, in accuracy points in each claim's direction "
    "(errors turned into accuracies first); the harness's with its 95 % interval. Direction: "
    "'same' or 'opposite' where the harness interval excludes 0."
)


def write_beside(results: Sequence, stem: Path) -> list[Path]:
    """``stem``.md/.tex/.csv of :func:`beside_table`."""
    table = beside_table(results)
    return write_table(table, table, stem, CAPTION, 6)
