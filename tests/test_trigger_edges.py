"""Interval and date edges of triggers: whole milliseconds, extreme values, end_at.

Pure functions, tested with explicit aware UTC times; nothing reads a clock.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from cml_jobs import (
    CronTaskDescriptor,
    InvalidTriggerError,
    RecurrentTaskDescriptor,
    ScheduledTaskDescriptor,
)
from cml_jobs._triggers import first_occurrence, next_occurrence, plan

UTC = timezone.utc
T0 = datetime(2030, 1, 1, tzinfo=UTC)
MS = timedelta(milliseconds=1)


def every(interval: float | timedelta, **options: Any) -> RecurrentTaskDescriptor:
    return RecurrentTaskDescriptor(id="task-1", name="Job", interval=interval, **options)


def cron(expression: str, **options: Any) -> CronTaskDescriptor:
    return CronTaskDescriptor(id="task-1", name="Job", cron=expression, **options)


@pytest.mark.parametrize(
    ("interval", "shown", "nearest"),
    [
        pytest.param(timedelta(seconds=10) / 3, "3.333333 s", "3.333 s", id="ten-thirds-s"),
        pytest.param(timedelta(microseconds=1500), "0.0015 s", "0.002 s", id="1.5ms"),
        pytest.param(1.0015, "1.0015 s", "1.002 s", id="float-seconds"),
    ],
)
def test_an_interval_that_is_not_whole_milliseconds_is_refused_naming_the_nearest(
    interval: float | timedelta, shown: str, nearest: str
) -> None:
    """Stores keep times to the millisecond, so such a grid could not be kept: the error
    names the value and the nearest whole-millisecond interval."""
    with pytest.raises(InvalidTriggerError, match="whole number of milliseconds") as caught:
        every(interval, start_at=T0)
    assert f"(got {shown})" in str(caught.value)
    assert f"use {nearest}" in str(caught.value)


@pytest.mark.parametrize(
    ("interval", "problem"),
    [
        pytest.param(0, "must be positive", id="zero"),
        pytest.param(-60, "must be positive", id="negative"),
        pytest.param(timedelta(microseconds=999), "at least 1 ms", id="under-a-millisecond"),
    ],
)
def test_an_interval_that_is_not_positive_is_refused(interval: Any, problem: str) -> None:
    """Zero, negative and sub-millisecond intervals are refused with the value shown."""
    with pytest.raises(InvalidTriggerError, match=re.escape(problem)):
        every(interval)


@pytest.mark.parametrize(
    ("interval", "start_at"),
    [
        pytest.param(timedelta(milliseconds=3333), T0, id="3.333s-with-start"),
        pytest.param(timedelta(milliseconds=3333), None, id="3.333s-without-start"),
        pytest.param(timedelta(milliseconds=2), T0 + 7 * MS, id="2ms-with-start"),
        pytest.param(timedelta(milliseconds=1), None, id="1ms-without-start"),
    ],
)
def test_a_whole_millisecond_interval_keeps_its_exact_grid(
    interval: timedelta, start_at: datetime | None
) -> None:
    """1,000 occurrences of an odd whole-millisecond interval: no repeat, no drift, each at
    start + k * interval, starting from a now with microseconds."""
    now = T0 + timedelta(microseconds=123_456)
    descriptor = every(interval, start_at=start_at)
    start = first_occurrence(descriptor, now)
    assert start is not None and start.microsecond % 1000 == 0
    occurrence = start
    for k in range(1, 1001):
        occurrence = next_occurrence(descriptor, occurrence)  # type: ignore[assignment]
        assert occurrence == start + k * interval


def test_an_interval_past_the_end_of_the_calendar_has_no_occurrence() -> None:
    """10**12 s from now is past year 9999: no occurrence, no OverflowError."""
    assert first_occurrence(every(10**12), T0) is None
    last = datetime(9999, 12, 31, 23, 59, tzinfo=UTC)
    assert next_occurrence(every(120, start_at=last), last) is None


def test_a_start_at_at_the_start_of_the_calendar_is_a_grid_like_any_other() -> None:
    """start_at in year 1 anchors the grid; its latest point before now is due."""
    descriptor = every(60, start_at=datetime(1, 1, 1, tzinfo=UTC))
    assert first_occurrence(descriptor, T0 + timedelta(seconds=90)) == T0 + timedelta(minutes=1)
    leap_days = cron("0 0 29 2 *", start_at=datetime(1, 1, 1, tzinfo=UTC))
    assert first_occurrence(leap_days, T0) == datetime(2028, 2, 29, tzinfo=UTC)


def test_a_cron_past_the_end_of_the_calendar_has_no_occurrence() -> None:
    """A cron time past year 9999 does not exist: no occurrence, no OverflowError."""
    end = datetime(9999, 12, 31, 23, 59, tzinfo=UTC)
    assert next_occurrence(cron("* * * * *"), end) is None
    assert next_occurrence(cron("0 0 1 1 *", timezone="America/New_York"), end) is None


@pytest.mark.parametrize(
    "descriptor",
    [
        pytest.param(every(60, start_at=T0, end_at=T0 + timedelta(seconds=150)), id="interval"),
        pytest.param(cron("* * * * *", start_at=T0, end_at=T0 + timedelta(seconds=150)), id="cron"),
    ],
)
def test_no_occurrence_comes_after_end_at(descriptor: Any) -> None:
    """The occurrences are the trigger's times up to end_at, and then none."""
    found = [first_occurrence(descriptor, T0)]
    while (following := next_occurrence(descriptor, found[-1])) is not None:
        found.append(following)
    assert found == [T0, T0 + timedelta(minutes=1), T0 + timedelta(minutes=2)]
    late = plan(descriptor, T0, T0 + timedelta(days=1))
    assert (late.run_at, late.missed, late.next_due_at) == (None, 3, None)


@pytest.mark.parametrize("kind", [RecurrentTaskDescriptor, CronTaskDescriptor])
def test_end_at_before_start_at_is_refused(kind: Any) -> None:
    """A task that would end before it starts is refused, naming both times."""
    trigger = {"interval": 60} if kind is RecurrentTaskDescriptor else {"cron": "* * * * *"}
    with pytest.raises(InvalidTriggerError, match="end_at is before start_at"):
        kind(id="t", name="Job", start_at=T0, end_at=T0 - MS, **trigger)


def test_a_one_time_task_has_no_end_at() -> None:
    """end_at belongs to recurring triggers; a one-time task refuses it."""
    with pytest.raises(InvalidTriggerError, match="end_at: Extra inputs are not permitted"):
        ScheduledTaskDescriptor(id="t", name="Job", scheduled_at=T0, end_at=T0)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("expression", "field", "instead"),
    [
        pytest.param(
            "0 0 1 1 * 2030",
            "6th field '2030'",
            "use '0 0 1 1 *' with start_at=2030-01-01T00:00 and end_at=2030-12-31T23:59:59",
            id="5-fields-and-a-year",
        ),
        pytest.param(
            "0 0 12 * * ? 2030-2031",
            "7th field '2030-2031'",
            "use '0 0 12 * * *' with start_at=2030-01-01T00:00 and end_at=2031-12-31T23:59:59",
            id="quartz-7-fields",
        ),
        pytest.param("0 0 12 * * * *", "7th field '*'", "use '0 0 12 * * *'", id="quartz-any-year"),
    ],
)
def test_a_year_field_is_refused_naming_it_and_what_to_write_instead(
    expression: str, field: str, instead: str
) -> None:
    """Cron has no year field: the error names the field and gives the equivalent."""
    with pytest.raises(InvalidTriggerError) as caught:
        cron(expression)
    message = str(caught.value)
    assert f"{field} is a year" in message
    assert instead in message


@pytest.mark.parametrize(
    "expression",
    [
        "*/5 9-17 * * mon-fri",  # names, ranges, steps
        "0 0 L * *",  # last day of the month
        "0 0 LW * *",  # last weekday of the month
        "0 0 * * 5L",  # last Friday of the month
        "0 0 * * mon#2",  # second Monday of the month
        "0 0 1,15 jan,jul *",
        "*/10 * * * * *",  # 6 fields: seconds first
    ],
)
def test_the_documented_cron_forms_are_accepted(expression: str) -> None:
    """Every form docs/guides/scheduling.md lists is accepted and has an occurrence."""
    assert next_occurrence(cron(expression), T0) is not None


@pytest.mark.parametrize(
    ("expression", "problem"),
    [
        pytest.param("@daily", "expected 5 fields", id="nickname"),
        pytest.param("0 0 ? * mon", "not a valid cron expression", id="question-mark"),
        pytest.param("0 0 15W * *", "not a valid cron expression", id="nearest-weekday"),
    ],
)
def test_forms_outside_cron_are_refused(expression: str, problem: str) -> None:
    """Nicknames and Quartz's ? and W are not accepted: the error quotes the expression."""
    with pytest.raises(InvalidTriggerError, match=re.escape(repr(expression))) as caught:
        cron(expression)
    assert problem in str(caught.value)
