"""Schedules: a value as a function of the global step, for EMA momentum and BRN's rmax/dmax.

A schedule is called as ``schedule(step, total_steps)`` with ``step`` counted from 0. Windows are
given in ``steps`` or as a ``fraction`` of ``total_steps`` (rounded to the nearest step), chosen by
``unit``; outside its window a ramp holds its end values.

Momentum convention: the weight of the new batch, as in PyTorch (``running = (1 - m) running +
m batch``). Papers that speak of a *decay* ``d`` mean ``m = 1 - d``; :func:`build_schedule` takes
``convention="decay"`` to convert such values at the boundary, so everything inside the
package is momentum.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

KINDS = ("constant", "linear", "cosine", "cumulative", "piecewise")
UNITS = ("steps", "fraction")
CONVENTIONS = ("momentum", "decay")


@dataclass
class ScheduleConfig:
    """A schedule as a config node holds it: ``kind`` and the fields that kind reads. The
    ``momentum`` node and a mode's scheduled options (renorm's ``norm.rmax``) are of this type."""

    kind: str = "constant"
    value: float | None = None
    start: float | None = None
    end: float | None = None
    begin: float = 0.0
    finish: float = 1.0
    unit: str = "fraction"
    knots: list[list[float]] | None = None
    floor: float = 0.0
    convention: str = "momentum"


def schedule_kwargs(sched: ScheduleConfig) -> dict[str, Any]:
    """The fields :func:`build_schedule` takes: those set."""
    return {k: v for k, v in vars(sched).items() if v is not None}


def _resolve(at: float, unit: str, total_steps: int) -> float:
    return at * total_steps if unit == "fraction" else at


@dataclass(frozen=True)
class Constant:
    value: float

    def __call__(self, step: int, total_steps: int) -> float:
        return self.value


@dataclass(frozen=True)
class Piecewise:
    """Linear interpolation between ``(at, value)`` knots, holding the first and last values.

    ``linear`` is the two-knot case: ``start`` until ``begin``, a ramp, ``end`` from ``finish``
    on. The BRN paper's rmax/dmax schedule is the same shape: hold at 1 (or 0) through a
    warm-up, then relax linearly to the final bound.
    """

    knots: tuple[tuple[float, float], ...]
    unit: str = "steps"

    def __call__(self, step: int, total_steps: int) -> float:
        points = [(round(_resolve(at, self.unit, total_steps)), v) for at, v in self.knots]
        if step <= points[0][0]:
            return points[0][1]
        for (at0, v0), (at1, v1) in itertools.pairwise(points):
            if step < at1:
                return v0 + (v1 - v0) * (step - at0) / (at1 - at0)
        return points[-1][1]


@dataclass(frozen=True)
class Cosine:
    """Half-cosine from ``start`` at ``begin`` to ``end`` at ``finish``, held outside."""

    start: float
    end: float
    begin: float = 0.0
    finish: float = 1.0
    unit: str = "fraction"

    def __call__(self, step: int, total_steps: int) -> float:
        begin = round(_resolve(self.begin, self.unit, total_steps))
        finish = round(_resolve(self.finish, self.unit, total_steps))
        if step <= begin:
            return self.start
        if step >= finish:
            return self.end
        progress = (step - begin) / (finish - begin)
        return self.end + (self.start - self.end) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class Cumulative:
    """Momentum ``1/(t+1)``: the EMA becomes the exact mean of every batch seen so far.

    ``floor`` (default 0) bounds it from below, turning it into an EMA of horizon ``1/floor``
    once ``1/(t+1)`` falls under it.
    """

    floor: float = 0.0

    def __call__(self, step: int, total_steps: int) -> float:
        return max(1.0 / (step + 1), self.floor)


Schedule = Constant | Piecewise | Cosine | Cumulative


def build_schedule(
    kind: str,
    *,
    value: float | None = None,
    start: float | None = None,
    end: float | None = None,
    begin: float = 0.0,
    finish: float = 1.0,
    unit: str = "fraction",
    knots: Sequence[Sequence[float]] | None = None,
    floor: float = 0.0,
    convention: str = "momentum",
) -> Schedule:
    """Build a schedule; ``convention="decay"`` converts every value ``v`` to ``1 - v``."""
    if kind not in KINDS:
        raise ValueError(f"schedule kind must be one of {KINDS}, got {kind!r}")
    if unit not in UNITS:
        raise ValueError(f"schedule unit must be one of {UNITS}, got {unit!r}")
    if convention not in CONVENTIONS:
        raise ValueError(f"schedule convention must be one of {CONVENTIONS}, got {convention!r}")
    flip = (lambda v: 1.0 - v) if convention == "decay" else (lambda v: v)
    if kind == "constant":
        return Constant(flip(_required("value", value)))
    if kind == "cumulative":
        return Cumulative(flip(floor) if floor else 0.0)
    if kind == "cosine":
        start, end = flip(_required("start", start)), flip(_required("end", end))
        return Cosine(start, end, begin, finish, unit)
    if kind == "linear":
        knots = [(begin, _required("start", start)), (finish, _required("end", end))]
    points = tuple((float(at), flip(float(v))) for at, v in _required("knots", knots))
    _check_knots(points)
    return Piecewise(points, unit)


def _required(name: str, value: object) -> object:
    if value is None:
        raise ValueError(f"schedule needs `{name}`")
    return value


def _check_knots(points: tuple[tuple[float, float], ...]) -> None:
    if not points:
        raise ValueError("schedule `knots` must hold at least one (at, value) pair")
    ats = [at for at, _ in points]
    if any(b <= a for a, b in itertools.pairwise(ats)):
        raise ValueError(f"schedule window must increase strictly (begin < finish), got {ats}")


def check_schedule(
    schedule: Schedule, total_steps: int, name: str, low: float, high: float = math.inf
) -> None:
    """Reject a schedule that is impossible for a run of ``total_steps``, before training.

    Windows must lie inside ``[0, total_steps]`` and be non-empty once resolved to steps, and
    every value the schedule takes must lie in ``[low, high]``.
    """
    for at, label in _window_bounds(schedule):
        resolved = _resolve(at, schedule.unit, total_steps)
        if not 0 <= resolved <= total_steps:
            raise ValueError(
                f"{name}: {label}={at} ({schedule.unit}) lies outside the run's "
                f"0..{total_steps} steps"
            )
    steps = _window_steps(schedule, total_steps)
    if any(b <= a for a, b in itertools.pairwise(steps)):
        raise ValueError(
            f"{name}: window collapses to steps {steps} in a run of {total_steps} steps; "
            "begin must come before finish"
        )
    for step in sorted({0, total_steps - 1, *steps} - {total_steps}):
        value = schedule(step, total_steps)
        if not low <= value <= high:
            raise ValueError(f"{name}: value {value} at step {step} lies outside [{low}, {high}]")


def _window_bounds(schedule: Schedule) -> list[tuple[float, str]]:
    if isinstance(schedule, Piecewise):
        return [(at, "window point") for at, _ in schedule.knots]
    if isinstance(schedule, Cosine):
        return [(schedule.begin, "begin"), (schedule.finish, "finish")]
    return []


def _window_steps(schedule: Schedule, total_steps: int) -> list[int]:
    return [round(_resolve(at, schedule.unit, total_steps)) for at, _ in _window_bounds(schedule)]
