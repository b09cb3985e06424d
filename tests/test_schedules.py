"""Schedules against hand-computed values at their boundaries."""

import math

import pytest

from normlab.schedules import build_schedule, check_schedule


def test_constant():
    s = build_schedule("constant", value=0.1)
    assert [s(t, 100) for t in (0, 50, 99)] == [0.1, 0.1, 0.1]


def test_linear_ramp_in_steps_holds_outside_its_window():
    s = build_schedule("linear", start=0.5, end=0.01, begin=10, finish=20, unit="steps")
    assert s(0, 100) == 0.5
    assert s(10, 100) == 0.5
    assert s(15, 100) == pytest.approx(0.255)
    assert s(19, 100) == pytest.approx(0.5 - 0.49 * 0.9)
    assert s(20, 100) == 0.01
    assert s(99, 100) == 0.01


def test_linear_ramp_as_fractions_scales_with_run_length():
    s = build_schedule("linear", start=1.0, end=3.0, begin=0.25, finish=0.75, unit="fraction")
    assert s(25, 100) == 1.0 and s(50, 100) == pytest.approx(2.0) and s(75, 100) == 3.0
    assert s(250, 1000) == 1.0 and s(500, 1000) == pytest.approx(2.0) and s(750, 1000) == 3.0


def test_cumulative_is_the_exact_running_mean():
    s = build_schedule("cumulative")
    assert [s(t, 10) for t in range(4)] == [1.0, 0.5, 1 / 3, 0.25]
    running = 0.0
    values = [3.0, 5.0, 10.0, -2.0]
    for t, v in enumerate(values):
        running = (1 - s(t, 10)) * running + s(t, 10) * v
    assert running == pytest.approx(sum(values) / len(values))
    assert build_schedule("cumulative", floor=0.1)(50, 100) == 0.1


def test_cosine_boundaries_and_midpoint():
    s = build_schedule("cosine", start=0.5, end=0.0, begin=0, finish=1.0)
    assert s(0, 100) == 0.5
    assert s(50, 100) == pytest.approx(0.25)
    assert s(25, 100) == pytest.approx(0.25 * (1 + math.cos(math.pi / 4)))
    assert s(100, 100) == 0.0


def test_brn_paper_piecewise_form():
    # rmax: 1 through 5k steps, linear to 3 at 40k (Ioffe 2017, section 4)
    s = build_schedule("piecewise", knots=[[5000, 1.0], [40000, 3.0]], unit="steps")
    assert s(0, 100_000) == 1.0 and s(5000, 100_000) == 1.0
    assert s(22500, 100_000) == pytest.approx(2.0)
    assert s(40000, 100_000) == 3.0 and s(90000, 100_000) == 3.0
    three = build_schedule("piecewise", knots=[[0, 0.0], [10, 1.0], [30, 0.0]], unit="steps")
    assert [three(t, 40) for t in (0, 5, 10, 20, 30, 35)] == [0.0, 0.5, 1.0, 0.5, 0.0, 0.0]


def test_decay_convention_converts_to_momentum():
    s = build_schedule(
        "linear", start=0.9, end=0.999, begin=0, finish=10, unit="steps", convention="decay"
    )
    assert s(0, 10) == pytest.approx(0.1) and s(10, 10) == pytest.approx(0.001)
    assert build_schedule("constant", value=0.99, convention="decay")(3, 10) == pytest.approx(0.01)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "exponential", "value": 1}, "kind"),
        ({"kind": "constant"}, "value"),
        ({"kind": "linear", "start": 0, "end": 1, "unit": "epochs"}, "unit"),
        ({"kind": "linear", "start": 0, "end": 1, "begin": 0.5, "finish": 0.2}, "begin < finish"),
        ({"kind": "piecewise", "knots": []}, "knots"),
        ({"kind": "constant", "value": 0.1, "convention": "gamma"}, "convention"),
    ],
)
def test_bad_schedules_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_schedule(**kwargs)


def test_check_schedule_rejects_windows_and_values_impossible_for_the_run():
    ramp = build_schedule("linear", start=0.5, end=0.1, begin=0, finish=500, unit="steps")
    check_schedule(ramp, 500, "momentum", 0.0, 1.0)
    with pytest.raises(ValueError, match="outside the run"):
        check_schedule(ramp, 200, "momentum", 0.0, 1.0)
    tiny = build_schedule("linear", start=0.5, end=0.1, begin=0.1, finish=0.2)
    with pytest.raises(ValueError, match="collapses"):
        check_schedule(tiny, 2, "momentum", 0.0, 1.0)
    rmax = build_schedule("linear", start=1.0, end=0.5, begin=0, finish=1.0)
    with pytest.raises(ValueError, match=r"rmax: value 0.55 at step 9 lies outside \[1.0"):
        check_schedule(rmax, 10, "rmax", 1.0)
