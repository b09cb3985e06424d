"""Signals act only between two training steps, where the trainer's state is consistent."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any


class SignalGuard:
    """Signals act only between two iterations, where the trainer's state is consistent.

    Python runs a signal handler between any two bytecodes of the main thread, in the middle of
    an optimizer step as readily as anywhere, so the handlers here only record the signal; the
    loop calls :meth:`dispatch` between iterations. SIGTERM and SIGINT then end the run
    gracefully (checkpoint, status ``interrupted``). SIGUSR2 is submitit's preemption/time-out
    signal: the handler installed before (submitit's: it calls the launcher's checkpoint hook,
    then requeues and exits) runs at the boundary; with none installed, it stops the run like
    SIGTERM.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer
        self.previous: dict[int, Callable | int | None] = {}
        self.pending: list[int] = []

    def __enter__(self) -> SignalGuard:
        global _ACTIVE_TRAINER
        _ACTIVE_TRAINER = self.trainer
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self.previous[sig] = signal.signal(sig, self._record)
        return self

    def _record(self, signum: int, frame: object) -> None:
        self.pending.append(signum)

    def dispatch(self) -> None:
        while self.pending:
            signum = self.pending.pop(0)
            previous = self.previous.get(signum)
            if signum == signal.SIGUSR2 and callable(previous):
                previous(signum, None)
            else:
                self.trainer.stop_signal = signal.Signals(signum).name

    def __exit__(self, *exc: object) -> None:
        global _ACTIVE_TRAINER
        _ACTIVE_TRAINER = None
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


_ACTIVE_TRAINER: Any = None


def checkpoint_active_trainer() -> bool:
    """Save a checkpoint of the run training in this process, if any (preemption hook).

    Signals are dispatched between iterations (:class:`SignalGuard`), so when this runs from
    submitit's handler the trainer is between two steps and its state is consistent.
    """
    if _ACTIVE_TRAINER is None:
        return False
    _ACTIVE_TRAINER.stop_signal = "preempted"
    _ACTIVE_TRAINER.save_checkpoint()
    return True
