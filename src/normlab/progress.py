"""What a person watching sees: a bar per run and one for the sweep on a terminal, one line per
finished run in logs and CI.

On a terminal a run shows a tqdm bar (step/total, rate, ETA, loss, validation accuracy); a
sweep shows runs done/total with how many completed, diverged, failed or were skipped, elapsed
and ETA. Runs of a sweep launched in other processes (joblib workers) do not draw: they write
their progress to a small file in the directory named by ``NORMLAB_PROGRESS_DIR``, and the
sweep's bar in the launching process draws one line per running job from those files. Without
a terminal nothing is drawn; each finished run is one line (:func:`finished_line`), printed by
the launcher in a sweep and by the run itself otherwise.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from tqdm import tqdm

PROGRESS_DIR = "NORMLAB_PROGRESS_DIR"  # set by a sweep launcher for runs in other processes
IN_SWEEP = "NORMLAB_IN_SWEEP"  # set by a sweep launcher that draws: runs then stay quiet
REPORT_EVERY_S = 0.5


def on_terminal(mode: str = "auto") -> bool:
    return mode == "on" or (mode == "auto" and sys.stderr.isatty())


class RunProgress:
    """One run's bar, or its progress file in a sweep run by other processes."""

    def __init__(self, total: int, label: str, mode: str = "auto", initial: int = 0) -> None:
        self.total, self.label, self.step = total, label, initial
        self.started = time.monotonic()
        self.report = Path(os.environ[PROGRESS_DIR]) if os.environ.get(PROGRESS_DIR) else None
        self.last_report = 0.0
        self.bar = None
        if self.report is None and mode != "off" and on_terminal(mode):
            nested = bool(os.environ.get(IN_SWEEP))
            self.bar = tqdm(
                total=total,
                initial=initial,
                desc=label,
                unit="step",
                position=1 if nested else 0,
                leave=not nested,
                dynamic_ncols=True,
                file=sys.stderr,
            )

    def update(self, step: int, **fields: float) -> None:
        if self.bar is not None:
            self.bar.update(step - self.step)
            if fields:
                self.bar.set_postfix({k: f"{v:.4g}" for k, v in fields.items()}, refresh=False)
        self.step = step
        if self.report is not None and time.monotonic() - self.last_report >= REPORT_EVERY_S:
            self._write_report()

    def _write_report(self) -> None:
        self.last_report = time.monotonic()
        state = {
            "label": self.label,
            "step": self.step,
            "total": self.total,
            "started": self.started,
            "now": self.last_report,
        }
        path = self.report / f"{os.getpid()}.json"
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(state))
        os.replace(temporary, path)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.report is not None:
            with contextlib.suppress(FileNotFoundError):
                (self.report / f"{os.getpid()}.json").unlink()


def finished_line(summary: Mapping[str, Any]) -> str:
    """``renorm-bs4-s0-v2-1a2b3c4d: completed, 2000 steps in 12.3 s, val_acc_eval 61.2%``."""
    name = summary.get("run_id", "run")
    status = summary.get("status", "?")
    if summary.get("skipped"):
        return f"{name}: already {status}; skipped"
    parts = [f"{name}: {status}"]
    if "steps" in summary:
        seconds = (summary.get("train_seconds") or 0.0) + (summary.get("eval_seconds") or 0.0)
        parts.append(f"{summary['steps']} steps in {seconds:.1f} s")
    accuracy = (summary.get("final") or {}).get("val_acc_eval")
    if isinstance(accuracy, float):
        parts.append(f"val_acc_eval {accuracy:.1%}")
    if summary.get("divergence_step") is not None:
        parts.append(f"diverged at step {summary['divergence_step']}")
    if summary.get("error"):
        parts.append(str(summary["error"]).strip().splitlines()[-1])
    return ", ".join(parts)


class SweepProgress:
    """The sweep's bar (runs done/total, completed/diverged/failed/skipped, elapsed, ETA) and,
    for runs in other processes, one line per running job read from their progress files."""

    def __init__(self, total: int, name: str = "sweep", mode: str = "auto") -> None:
        self.total, self.name = total, name
        self.counts: Counter[str] = Counter()
        self.started = time.monotonic()
        self.terminal = on_terminal(mode) and mode != "off"
        self.bar = None
        if self.terminal:
            self.bar = tqdm(
                total=total, desc=name, unit="run", position=0, dynamic_ncols=True, file=sys.stderr
            )
        self._jobs: dict[str, tqdm] = {}
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    @contextlib.contextmanager
    def in_process(self) -> Iterator[None]:
        """Runs in this process keep quiet while the sweep draws (their bar nests under it)."""
        with _environ(IN_SWEEP, "1" if self.terminal else None):
            yield

    @contextlib.contextmanager
    def other_processes(self, directory: Path) -> Iterator[None]:
        """Runs in worker processes report to files in ``directory``; draw a line per job."""
        directory.mkdir(parents=True, exist_ok=True)
        if self.terminal:
            self._watcher = threading.Thread(target=self._watch, args=(directory,), daemon=True)
            self._watcher.start()
        try:
            with _environ(PROGRESS_DIR, str(directory)):
                yield
        finally:
            self._stop.set()
            if self._watcher is not None:
                self._watcher.join()
            for bar in self._jobs.values():
                bar.close()

    def job_done(self, summary: Mapping[str, Any] | None, error: str | None = None) -> None:
        summary = dict(summary or {})
        if error is not None:
            summary.setdefault("status", "failed")
            summary.setdefault("error", error)
        status = "skipped" if summary.get("skipped") else str(summary.get("status", "failed"))
        self.counts[status] += 1
        line = finished_line(summary)
        done = sum(self.counts.values())
        if self.bar is not None:
            self.bar.set_postfix(dict(self.counts), refresh=False)
            self.bar.update(1)
            if status != "skipped":
                self.bar.write(f"[{done}/{self.total}] {line}", file=sys.stderr)
        elif status != "skipped":  # a skipped run says so itself
            print(f"[{done}/{self.total}] {line}", file=sys.stderr, flush=True)

    def close(self) -> str:
        if self.bar is not None:
            self.bar.close()
        elapsed = time.monotonic() - self.started
        counts = ", ".join(f"{n} {status}" for status, n in sorted(self.counts.items()))
        done = sum(self.counts.values())
        line = f"{self.name}: {done}/{self.total} runs ({counts}) in {elapsed:.0f} s"
        print(line, file=sys.stderr, flush=True)
        return line

    def _watch(self, directory: Path) -> None:
        while not self._stop.wait(REPORT_EVERY_S):
            seen = set()
            for path in directory.glob("*.json"):
                try:
                    state = json.loads(path.read_text())
                except (OSError, json.JSONDecodeError):
                    continue
                seen.add(path.stem)
                self._draw_job(path.stem, state)
            for key in set(self._jobs) - seen:
                self._jobs.pop(key).close()

    def _draw_job(self, key: str, state: Mapping[str, Any]) -> None:
        bar = self._jobs.get(key)
        if bar is None or bar.desc != state["label"]:
            if bar is not None:
                bar.close()
            bar = tqdm(
                total=state["total"],
                desc=state["label"],
                unit="step",
                leave=False,
                position=1 + len(self._jobs),
                dynamic_ncols=True,
                file=sys.stderr,
            )
            self._jobs[key] = bar
        bar.update(state["step"] - bar.n)


@contextlib.contextmanager
def _environ(key: str, value: str | None) -> Iterator[None]:
    previous = os.environ.get(key)
    if value is not None:
        os.environ[key] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = previous
