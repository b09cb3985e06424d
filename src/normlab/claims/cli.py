"""``normlab-claims RESULTS_DIR... [--out FILE] [--wandb] [--interval t|bootstrap]``: the claims'
verdicts from run records. Exit codes: 0 tables written, 1 no run records, 2 no such path."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from normlab import stats
from normlab.claims.inference import Result, evaluate
from normlab.claims.render import evidence_table, summary_table, verdict_table, write_claims
from normlab.results import load_runs


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="normlab-claims",
        description="Verdicts on the papers' claims from normlab run records.",
    )
    parser.add_argument("results", nargs="+", type=Path, help="results directories")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("results/figures/claims.md"),
        help="the Markdown table (.tex, .csv, _summary.csv and *_papers.* beside it; "
        "default: results/figures/claims.md)",
    )
    parser.add_argument(
        "--wandb", action="store_true", help="also log the tables to a wandb summary run"
    )
    parser.add_argument("--interval", choices=stats.METHODS, default="t")
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.results if not p.exists()]
    if missing:
        print(f"normlab-claims: no such directory: {', '.join(missing)}", file=sys.stderr)
        return 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        runs = load_runs(*args.results)
    if runs.empty:
        print(f"normlab-claims: no run records under {', '.join(map(str, args.results))}",
              file=sys.stderr)  # fmt: skip
        return 1
    with stats.interval_method(args.interval):
        results = evaluate(runs)
        written = write_claims(results, args.out)
        if args.wandb:
            _log(runs, results, written, args.results[0])
    for result in results:
        print(f"{result.claim.key}: {result.verdict}")
    print(f"wrote {len(written)} files:")
    for path in written:
        print(f"  {path}")
    return 0


def _log(runs: pd.DataFrame, results: Sequence[Result], written: list[Path], root: Path) -> None:
    from normlab import dashboard, papers

    tables = {
        "claims": verdict_table(results),
        "claims_summary": summary_table(results),
        "claims_evidence": evidence_table(results),
        "papers": papers.beside_table(results),
    }
    run_dir = dashboard.log_summary(runs, "claims", [], tables, root)
    print(f"logged {len(tables)} tables to wandb: {run_dir}")
