"""Trigger arithmetic and the misfire/coalesce decision: pure functions, tested with tables.

Every time is an explicit aware UTC datetime; nothing here reads a clock.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from cml_jobs import CronTaskDescriptor, RecurrentTaskDescriptor, ScheduledTaskDescriptor
from cml_jobs._triggers import (
    Plan,
    check_cron,
    first_occurrence,
    grid_point_at_or_after,
    jitter_offset,
    next_occurrence,
    plan,
)

UTC = timezone.utc
T0 = datetime(2030, 1, 1, tzinfo=UTC)  # a Tuesday
MIN = timedelta(minutes=1)
SEC = timedelta(seconds=1)


def at(*args: int) -> datetime:
    """An aware UTC datetime."""
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def every(interval: float | timedelta, **options: Any) -> RecurrentTaskDescriptor:
    """An interval task."""
    return RecurrentTaskDescriptor(id="task-1", name="Job", interval=interval, **options)


def cron(expression: str, zone: str = "UTC", **options: Any) -> CronTaskDescriptor:
    """A cron task."""
    return CronTaskDescriptor(id="task-1", name="Job", cron=expression, timezone=zone, **options)


def once(scheduled_at: datetime, **options: Any) -> ScheduledTaskDescriptor:
    """A one-time task."""
    return ScheduledTaskDescriptor(id="task-1", name="Job", scheduled_at=scheduled_at, **options)


# --- first_occurrence ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("descriptor", "now", "expected"),
    [
        pytest.param(every(60), T0, T0 + MIN, id="interval-without-start-is-one-interval-away"),
        pytest.param(
            every(60, start_at=T0 + timedelta(hours=1)),
            T0,
            T0 + timedelta(hours=1),
            id="interval-future-start-is-the-start",
        ),
        pytest.param(
            every(timedelta(minutes=25), start_at=T0 - timedelta(hours=1)),
            T0,
            T0 - timedelta(minutes=10),
            id="interval-past-start-is-the-latest-grid-point-which-grace-then-judges",
        ),
        pytest.param(
            every(timedelta(minutes=30), start_at=T0 - timedelta(hours=1)),
            T0,
            T0,
            id="interval-past-start-grid-point-at-now-counts",
        ),
        pytest.param(once(T0 + MIN), T0, T0 + MIN, id="one-time-is-its-time"),
        pytest.param(once(T0 - MIN), T0, T0 - MIN, id="one-time-in-the-past-is-still-its-time"),
        pytest.param(cron("*/15 * * * *"), T0 + MIN, T0 + 15 * MIN, id="cron-next-match"),
        pytest.param(cron("0 * * * *"), T0, T0, id="cron-match-at-now-counts"),
        pytest.param(
            cron("*/15 * * * *", start_at=T0 + timedelta(days=1, minutes=7)),
            T0,
            T0 + timedelta(days=1, minutes=15),
            id="cron-future-start-first-match-after-it",
        ),
        pytest.param(
            cron("0 0 * * *", start_at=T0 + timedelta(days=1)),
            T0,
            T0 + timedelta(days=1),
            id="cron-future-start-on-a-match-counts",
        ),
        pytest.param(cron("*/10 * * * * *"), T0 + SEC, T0 + 10 * SEC, id="cron-6-field"),
        pytest.param(
            cron("30 0 12 * * *"), T0, at(2030, 1, 1, 12, 0, 30), id="cron-6-field-seconds-first"
        ),
        pytest.param(
            cron("0 9 * * *", "Europe/Paris"), T0, at(2030, 1, 1, 8), id="cron-timezone-winter"
        ),
        pytest.param(
            cron("0 9 * * *", "Europe/Paris"),
            at(2030, 7, 1),
            at(2030, 7, 1, 7),
            id="cron-timezone-summer",
        ),
    ],
)
def test_first_occurrence(descriptor: Any, now: datetime, expected: datetime) -> None:
    """The first occurrence is the trigger's first time at or after now, or, once start_at
    has come, its latest time at or before now."""
    assert first_occurrence(descriptor, now) == expected


# --- next_occurrence ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("descriptor", "after", "expected"),
    [
        pytest.param(every(60), T0, T0 + MIN, id="interval-from-an-occurrence"),
        pytest.param(every(60, start_at=T0), T0, T0 + MIN, id="interval-grid-point"),
        pytest.param(
            every(60, start_at=T0),
            T0 + timedelta(seconds=210),
            T0 + 4 * MIN,
            id="interval-between-grid-points-lands-on-the-grid",
        ),
        pytest.param(
            every(60, start_at=T0), T0 - timedelta(days=3), T0, id="interval-before-start"
        ),
        pytest.param(once(T0), T0 - SEC, T0, id="one-time-before"),
        pytest.param(once(T0), T0, None, id="one-time-at-its-time-has-no-next"),
        pytest.param(once(T0), T0 + SEC, None, id="one-time-after-has-no-next"),
        pytest.param(cron("*/15 * * * *"), T0, T0 + 15 * MIN, id="cron-strictly-after"),
        pytest.param(cron("0 9 * * 1-5"), at(2030, 1, 4, 9), at(2030, 1, 7, 9), id="cron-weekdays"),
        pytest.param(cron("*/20 * * * * *"), T0, T0 + 20 * SEC, id="cron-6-field"),
        pytest.param(cron("*/20 * * * * *"), T0 + 40 * SEC, T0 + MIN, id="cron-6-field-wraps"),
        pytest.param(cron("5-7 0 * * * *"), T0 + 6 * SEC, T0 + 7 * SEC, id="cron-6-field-range"),
        pytest.param(
            cron("0 0 * * *", start_at=T0 + timedelta(days=3)),
            T0,
            T0 + timedelta(days=3),
            id="cron-before-start-is-at-or-after-start",
        ),
    ],
)
def test_next_occurrence(descriptor: Any, after: datetime, expected: datetime | None) -> None:
    """The next occurrence is the trigger's first time strictly after the given one."""
    assert next_occurrence(descriptor, after) == expected


@pytest.mark.parametrize(
    ("interval", "start_at"),
    [
        pytest.param(timedelta(milliseconds=100), T0, id="100ms-with-start"),
        pytest.param(timedelta(seconds=1.1), None, id="1.1s-without-start"),
        pytest.param(timedelta(minutes=7), T0 + timedelta(seconds=13), id="7min-odd-start"),
    ],
)
def test_interval_occurrences_do_not_drift(interval: timedelta, start_at: datetime | None) -> None:
    """The k-th occurrence of an interval task is exactly start + k * interval."""
    descriptor = every(interval, start_at=start_at)
    start = first_occurrence(descriptor, T0 - interval if start_at is None else T0)
    assert start is not None
    occurrence = start
    for k in range(1, 1001):
        occurrence = next_occurrence(descriptor, occurrence)  # type: ignore[assignment]
        assert occurrence == start + k * interval


@pytest.mark.parametrize(
    ("occurrence", "now", "expected"),
    [
        pytest.param(T0, T0 - SEC, T0, id="future-occurrence-is-kept"),
        pytest.param(T0, T0, T0, id="occurrence-at-now-is-kept"),
        pytest.param(T0, T0 + SEC, T0 + MIN, id="just-past-moves-one-step"),
        pytest.param(T0, T0 + 150 * SEC, T0 + 3 * MIN, id="long-past-moves-to-the-grid"),
    ],
)
def test_grid_point_at_or_after(occurrence: datetime, now: datetime, expected: datetime) -> None:
    """A resumed interval task continues on its own grid, at or after now."""
    assert grid_point_at_or_after(every(60), occurrence, now) == expected


# --- daylight saving ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "zone", "after", "expected"),
    [
        # Europe/Paris, 2030-03-31: 02:00 local becomes 03:00 (01:00 UTC).
        pytest.param(
            "30 2 * * *",
            "Europe/Paris",
            at(2030, 3, 30, 12),
            [at(2030, 3, 31, 1), at(2030, 4, 1, 0, 30)],
            id="paris-02:30-runs-at-03:00-on-the-day-it-does-not-exist",
        ),
        # America/New_York, 2030-03-10: 02:00 EST becomes 03:00 EDT (07:00 UTC).
        pytest.param(
            "30 2 * * *",
            "America/New_York",
            at(2030, 3, 9, 12),
            [at(2030, 3, 10, 7), at(2030, 3, 11, 6, 30)],
            id="new-york-02:30-runs-at-03:00-on-the-day-it-does-not-exist",
        ),
        pytest.param(
            "15 30 2 * * *",
            "Europe/Paris",
            at(2030, 3, 30, 12),
            [at(2030, 3, 31, 1, 0, 15), at(2030, 4, 1, 0, 30, 15)],
            id="paris-6-field-in-the-gap-keeps-its-seconds",
        ),
    ],
)
def test_cron_time_in_the_spring_forward_gap_runs_at_the_first_minute_after(
    expression: str, zone: str, after: datetime, expected: list[datetime]
) -> None:
    """A cron time that does not exist on a spring-forward day runs right after the gap."""
    assert _walk(cron(expression, zone), after, len(expected)) == expected


@pytest.mark.parametrize(
    ("expression", "zone", "after", "expected"),
    [
        # Europe/Paris, 2030-10-27: 03:00 CEST becomes 02:00 CET (01:00 UTC), so 02:xx
        # happens twice: 00:xx UTC and 01:xx UTC.
        pytest.param(
            "30 2 * * *",
            "Europe/Paris",
            at(2030, 10, 26, 12),
            [at(2030, 10, 27, 0, 30), at(2030, 10, 28, 1, 30)],
            id="paris-02:30-runs-once",
        ),
        pytest.param(
            "0 15 2 * * *",
            "Europe/Paris",
            at(2030, 10, 26, 12),
            [at(2030, 10, 27, 0, 15), at(2030, 10, 28, 1, 15)],
            id="paris-6-field-02:15:00-runs-once",
        ),
        # America/New_York, 2030-11-03: 02:00 EDT becomes 01:00 EST (06:00 UTC).
        pytest.param(
            "30 1 * * *",
            "America/New_York",
            at(2030, 11, 2, 12),
            [at(2030, 11, 3, 5, 30), at(2030, 11, 4, 6, 30)],
            id="new-york-01:30-runs-once",
        ),
    ],
)
def test_cron_time_that_occurs_twice_on_a_fall_back_day_runs_once(
    expression: str, zone: str, after: datetime, expected: list[datetime]
) -> None:
    """A cron time with a fixed hour that occurs twice on a fall-back day runs once."""
    assert _walk(cron(expression, zone), after, len(expected)) == expected


@pytest.mark.parametrize(
    "expression", ["*/30 * * * *", "0 */30 * * * *"], ids=["5-field", "6-field"]
)
def test_every_n_minutes_cron_keeps_running_through_the_repeated_hour(expression: str) -> None:
    """An every-30-minutes cron runs every 30 real minutes across a fall-back, as cron does."""
    occurrences = _walk(cron(expression, "Europe/Paris"), at(2030, 10, 26, 23, 45), 6)
    assert occurrences == [at(2030, 10, 27, 0, 0) + k * 30 * MIN for k in range(6)]


def test_first_occurrence_inside_the_repeated_hour_is_the_next_real_match() -> None:
    """Scheduling during the second pass of a repeated hour does not jump an hour ahead."""
    second_pass = at(2030, 10, 27, 1, 10)  # 02:10 CET, after 02:10 CEST an hour earlier
    assert first_occurrence(cron("*/15 * * * *", "Europe/Paris"), second_pass) == at(
        2030, 10, 27, 1, 15
    )


def _walk(descriptor: CronTaskDescriptor, after: datetime, count: int) -> list[datetime]:
    """The next ``count`` occurrences after ``after``."""
    found: list[datetime] = []
    for _ in range(count):
        following = next_occurrence(descriptor, found[-1] if found else after)
        assert following is not None
        found.append(following)
    return found


# --- check_cron ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "problem"),
    [
        pytest.param("", "expected 5 fields", id="empty"),
        pytest.param("* * * *", "expected 5 fields", id="four-fields"),
        pytest.param("* * * * * * *", "expected 5 fields", id="seven-fields"),
        pytest.param("61 * * * *", "not a valid cron expression", id="minute-61"),
        pytest.param("* 24 * * *", "not a valid cron expression", id="hour-24"),
        pytest.param("* * 32 * *", "not a valid cron expression", id="day-32"),
        pytest.param("* * * 13 *", "not a valid cron expression", id="month-13"),
        pytest.param("* * * * mon-xyz", "not a valid cron expression", id="bad-weekday"),
        pytest.param("*/0 * * * *", "not a valid cron expression", id="zero-step"),
        pytest.param("60 * * * * *", "seconds field '60'", id="seconds-60"),
        pytest.param("*/0 * * * * *", "seconds field '*/0'", id="seconds-zero-step"),
        pytest.param("5-1 * * * * *", "seconds field '5-1'", id="seconds-backwards-range"),
        pytest.param("x * * * * *", "not a valid cron expression", id="seconds-not-a-number"),
        pytest.param("0 61 * * * *", "not a valid cron expression", id="6-field-minute-61"),
    ],
)
def test_check_cron_refuses_a_bad_expression_naming_it(expression: str, problem: str) -> None:
    """check_cron raises ValueError whose message quotes the expression and the problem."""
    with pytest.raises(ValueError, match=re.escape(repr(expression))) as caught:
        check_cron(expression)
    assert problem in str(caught.value)


@pytest.mark.parametrize(
    "expression",
    [
        "* * * * *",
        "0 9 * * 1-5",
        "*/5 0-6 1,15 * sun",
        "0 0 1 jan *",
        "* * * * * *",
        "0,15,30-40/5 * * * * *",
        "*/10 0 9 * * mon",
    ],
)
def test_check_cron_accepts_5_and_6_field_expressions(expression: str) -> None:
    """Standard 5-field expressions and 6-field ones with seconds first are valid."""
    check_cron(expression)


# --- plan ---------------------------------------------------------------------------------

GRACE = timedelta(seconds=30)


@pytest.mark.parametrize(
    ("descriptor", "due_at", "now", "expected"),
    [
        pytest.param(
            every(60, misfire_grace_time=GRACE),
            T0,
            T0 + 10 * SEC,
            Plan(run_at=T0, missed=0, first_missed_at=None, next_due_at=T0 + MIN),
            id="on-time",
        ),
        pytest.param(
            every(60, misfire_grace_time=GRACE),
            T0,
            T0 + 3 * MIN + 10 * SEC,
            Plan(run_at=T0 + 3 * MIN, missed=3, first_missed_at=T0, next_due_at=T0 + 4 * MIN),
            id="coalesce-interval-latest-runs-earlier-missed",
        ),
        pytest.param(
            cron("* * * * *", misfire_grace_time=GRACE),
            T0,
            T0 + 3 * MIN + 10 * SEC,
            Plan(run_at=T0 + 3 * MIN, missed=3, first_missed_at=T0, next_due_at=T0 + 4 * MIN),
            id="coalesce-cron-latest-runs-earlier-missed",
        ),
        pytest.param(
            every(60, misfire_grace_time=timedelta(seconds=90), coalesce=False),
            T0,
            T0 + 3 * MIN + 10 * SEC,
            Plan(run_at=T0 + 2 * MIN, missed=2, first_missed_at=T0, next_due_at=T0 + 3 * MIN),
            id="no-coalesce-earliest-within-grace-runs",
        ),
        pytest.param(
            cron("* * * * *", misfire_grace_time=timedelta(seconds=90), coalesce=False),
            T0,
            T0 + 3 * MIN + 10 * SEC,
            Plan(run_at=T0 + 2 * MIN, missed=2, first_missed_at=T0, next_due_at=T0 + 3 * MIN),
            id="no-coalesce-cron-earliest-within-grace-runs",
        ),
        pytest.param(
            every(60, misfire_grace_time=GRACE, coalesce=False),
            T0,
            T0 + 70 * SEC,
            Plan(run_at=T0 + MIN, missed=1, first_missed_at=T0, next_due_at=T0 + 2 * MIN),
            id="no-coalesce-later-one-within-grace",
        ),
        pytest.param(
            every(60, misfire_grace_time=GRACE),
            T0,
            T0 + 3 * MIN + 40 * SEC,
            Plan(run_at=None, missed=4, first_missed_at=T0, next_due_at=T0 + 4 * MIN),
            id="coalesce-nothing-within-grace-all-missed",
        ),
        pytest.param(
            every(60, misfire_grace_time=GRACE, coalesce=False),
            T0,
            T0 + 3 * MIN + 40 * SEC,
            Plan(run_at=None, missed=4, first_missed_at=T0, next_due_at=T0 + 4 * MIN),
            id="no-coalesce-nothing-within-grace-all-missed",
        ),
        pytest.param(
            every(600, misfire_grace_time=GRACE),
            T0,
            T0 + 5 * MIN,
            Plan(run_at=None, missed=1, first_missed_at=T0, next_due_at=T0 + 10 * MIN),
            id="single-late-occurrence-missed",
        ),
        pytest.param(
            every(60, misfire_grace_time=None),
            T0,
            T0 + 3 * MIN + 40 * SEC,
            Plan(run_at=T0 + 3 * MIN, missed=3, first_missed_at=T0, next_due_at=T0 + 4 * MIN),
            id="no-grace-coalesce-late-latest-runs",
        ),
        pytest.param(
            every(60, misfire_grace_time=None, coalesce=False),
            T0,
            T0 + 3 * MIN + 40 * SEC,
            Plan(run_at=T0, missed=0, first_missed_at=None, next_due_at=T0 + MIN),
            id="no-grace-no-coalesce-every-late-one-runs-in-turn",
        ),
        pytest.param(
            once(T0, misfire_grace_time=None),
            T0,
            T0 + timedelta(days=30),
            Plan(run_at=T0, missed=0, first_missed_at=None, next_due_at=None),
            id="no-grace-one-time-runs-however-late",
        ),
        pytest.param(
            once(T0, misfire_grace_time=GRACE),
            T0,
            T0 + 10 * SEC,
            Plan(run_at=T0, missed=0, first_missed_at=None, next_due_at=None),
            id="one-time-on-time-runs-and-ends",
        ),
        pytest.param(
            once(T0, misfire_grace_time=GRACE),
            T0,
            T0 + 2 * MIN,
            Plan(run_at=None, missed=1, first_missed_at=T0, next_due_at=None),
            id="one-time-late-beyond-grace-missed-and-ends",
        ),
        pytest.param(
            once(T0, misfire_grace_time=GRACE, coalesce=False),
            T0,
            T0 + 2 * MIN,
            Plan(run_at=None, missed=1, first_missed_at=T0, next_due_at=None),
            id="one-time-late-beyond-grace-no-coalesce",
        ),
        pytest.param(
            every(60, misfire_grace_time=GRACE),
            T0,
            T0 + GRACE,
            Plan(run_at=T0, missed=0, first_missed_at=None, next_due_at=T0 + MIN),
            id="exactly-grace-late-still-runs",
        ),
    ],
)
def test_plan(descriptor: Any, due_at: datetime, now: datetime, expected: Plan) -> None:
    """plan() runs what grace and coalescing allow, counts the rest as missed."""
    assert plan(descriptor, due_at, now) == expected


def test_plan_counts_lateness_from_the_jittered_time() -> None:
    """An occurrence delayed by jitter is late only from its jittered time, not its grid time."""
    descriptor = every(60, jitter=50, misfire_grace_time=timedelta(seconds=2))
    offset = jitter_offset(descriptor, T0)
    assert offset > timedelta(seconds=2)  # a fixed fact of this id and time
    assert plan(descriptor, T0, T0 + offset + SEC).run_at == T0
    assert plan(descriptor, T0, T0 + offset + 3 * SEC).run_at is None


def test_plan_never_returns_fewer_than_the_due_occurrence() -> None:
    """A due occurrence whose time has not quite come is still the one planned."""
    result = plan(every(60), T0, T0 - SEC)
    assert result == Plan(run_at=T0, missed=0, first_missed_at=None, next_due_at=T0 + MIN)


@pytest.mark.parametrize(
    "expression", ["* * * * *", "* * * * * *"], ids=["every-minute", "every-second"]
)
def test_plan_with_a_huge_cron_backlog_plans_the_latest_occurrence(expression: str) -> None:
    """A cron task years behind is planned without walking every occurrence (the walk is
    bounded; benchmarks, not this test, measure its speed): the latest runs."""
    descriptor = cron(expression)
    due_at = T0 - timedelta(days=5 * 365)  # millions of occurrences behind
    result = plan(descriptor, due_at, T0)
    step = MIN if expression.count(" ") == 4 else SEC
    assert result.run_at == T0
    assert result.next_due_at == T0 + step
    assert result.first_missed_at == due_at
    assert result.missed >= 10_000 - 1


def test_plan_with_a_huge_interval_backlog_counts_it_exactly() -> None:
    """A coalesced interval backlog is counted by arithmetic, not walked or listed."""
    descriptor = every(timedelta(milliseconds=1))
    due_at = T0 - timedelta(days=1)
    result = plan(descriptor, due_at, T0)
    assert result == Plan(
        run_at=T0,
        missed=86_400_000,
        first_missed_at=due_at,
        next_due_at=T0 + timedelta(milliseconds=1),
    )


# --- jitter -------------------------------------------------------------------------------


def test_jitter_offset_is_zero_without_jitter() -> None:
    """A task without jitter runs exactly on its occurrences."""
    assert jitter_offset(every(60), T0) == timedelta(0)


def test_jitter_offset_is_deterministic() -> None:
    """Every worker computes the same offset for the same task and occurrence."""
    first = jitter_offset(every(60, jitter=30), T0)
    again = jitter_offset(every(60, jitter=30), T0)
    assert first == again


def test_jitter_offset_is_within_zero_and_jitter() -> None:
    """Offsets fall in [0, jitter) and vary from one occurrence to the next."""
    jitter = timedelta(seconds=30)
    descriptor = every(60, jitter=jitter)
    offsets = [jitter_offset(descriptor, T0 + k * MIN) for k in range(2000)]
    assert all(timedelta(0) <= offset < jitter for offset in offsets)
    assert len(set(offsets)) > 1900
    assert min(offsets) < jitter / 10 and max(offsets) > jitter * 9 / 10


def test_jitter_offset_differs_between_tasks() -> None:
    """Two tasks on the same grid do not share their jitter."""
    one = RecurrentTaskDescriptor(id="task-1", name="Job", interval=60, jitter=30)
    two = RecurrentTaskDescriptor(id="task-2", name="Job", interval=60, jitter=30)
    assert jitter_offset(one, T0) != jitter_offset(two, T0)
