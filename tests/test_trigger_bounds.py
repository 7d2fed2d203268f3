"""When recurrent and cron tasks start and end (start_at, end_at), through the bus, on
both stores, with time moved by hand (cml_jobs.testing)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from cml_jobs import (
    BackgroundTaskScheduler,
    CronTaskDescriptor,
    InvalidTriggerError,
    RecurrentTaskDescriptor,
    TaskEvent,
)
from cml_jobs.exceptions import TaskNotFoundError
from cml_jobs.stores import ScheduleStore
from cml_jobs.testing import ManualClock, run_due
from tests.fixtures.behaviour_jobs import ScriptedJob

UTC = timezone.utc
# A cron time (*/10 minutes), plus 0.4 ms: a start_at of "now" is stored as 00:00:00.000.
T0 = datetime(2030, 1, 1, 0, 0, 0, 400, tzinfo=UTC)
MIDNIGHT = datetime(2030, 1, 1, tzinfo=UTC)
MIN = timedelta(minutes=1)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
async def scheduler(
    store: ScheduleStore, clock: ManualClock
) -> AsyncIterator[BackgroundTaskScheduler]:
    """A scheduler over each store, with no worker: tests run due occurrences themselves."""
    ScriptedJob.attempts.clear()
    app = BackgroundTaskScheduler.configure(
        modules=["tests.fixtures.behaviour_jobs"], store=store, clock=clock, run_worker=False
    )
    async with app:
        yield app


def every_10_minutes(kind: str, **options: Any) -> RecurrentTaskDescriptor | CronTaskDescriptor:
    """The same trigger written as an interval or as a cron expression."""
    if kind == "recurrent":
        return RecurrentTaskDescriptor(id="t", name="ScriptedJob", interval=600, **options)
    return CronTaskDescriptor(id="t", name="ScriptedJob", cron="*/10 * * * *", **options)


def seen(events: list[TaskEvent]) -> list[tuple[str, datetime | None, int]]:
    return [(e.kind.value, e.occurrence_at, e.count) for e in events]


KINDS = pytest.mark.parametrize("kind", ["recurrent", "cron"])


@KINDS
async def test_start_at_now_runs_at_once(
    scheduler: BackgroundTaskScheduler, clock: ManualClock, kind: str
) -> None:
    """A task told to start now runs now, not one interval later."""
    info = await scheduler.bus.schedule_task(every_10_minutes(kind, start_at=clock.now()))
    assert info.next_run_time == MIDNIGHT
    events = await run_due(scheduler)
    assert seen(events) == [("started", MIDNIGHT, 1), ("succeeded", MIDNIGHT, 1)]
    assert (await scheduler.bus.get_task("t")).next_run_time == MIDNIGHT + 10 * MIN


@KINDS
async def test_start_at_a_few_seconds_ago_runs_at_once_within_grace(
    scheduler: BackgroundTaskScheduler, clock: ManualClock, kind: str
) -> None:
    """A start 5 s in the past is within the default 60 s grace: it runs now, late."""
    clock.set(MIDNIGHT + timedelta(seconds=5))
    await scheduler.bus.schedule_task(every_10_minutes(kind, start_at=MIDNIGHT))
    events = await run_due(scheduler)
    assert seen(events) == [("started", MIDNIGHT, 1), ("succeeded", MIDNIGHT, 1)]
    assert (await scheduler.bus.get_task("t")).next_run_time == MIDNIGHT + 10 * MIN


@KINDS
async def test_start_at_beyond_grace_is_one_missed_occurrence_then_the_grid(
    scheduler: BackgroundTaskScheduler, clock: ManualClock, kind: str
) -> None:
    """A start 5 minutes in the past is recorded as one missed occurrence; the task then
    runs on its grid."""
    clock.set(MIDNIGHT + 5 * MIN)
    await scheduler.bus.schedule_task(every_10_minutes(kind, start_at=MIDNIGHT))
    assert seen(await run_due(scheduler)) == [("missed", MIDNIGHT, 1)]
    task = await scheduler.bus.get_task("t")
    assert (task.next_run_time, task.counts.get("missed")) == (MIDNIGHT + 10 * MIN, 1)
    clock.set(MIDNIGHT + 10 * MIN)
    assert [e.kind.value for e in await run_due(scheduler)] == ["started", "succeeded"]


@KINDS
async def test_start_at_long_ago_joins_the_grid_at_its_latest_point(
    scheduler: BackgroundTaskScheduler, clock: ManualClock, kind: str
) -> None:
    """A start days ago counts only the grid's latest point, not every one since."""
    clock.set(MIDNIGHT + 5 * MIN)
    await scheduler.bus.schedule_task(every_10_minutes(kind, start_at=MIDNIGHT - timedelta(days=3)))
    assert seen(await run_due(scheduler)) == [("missed", MIDNIGHT, 1)]


@KINDS
async def test_end_at_is_the_last_occurrence_and_the_task_then_ends(
    scheduler: BackgroundTaskScheduler, clock: ManualClock, kind: str
) -> None:
    """No occurrence comes after end_at; after the last run the task has ended, as a
    one-time task has after its run: listed, ended, until history_retention, then gone."""
    end = MIDNIGHT + 25 * MIN
    info = await scheduler.bus.schedule_task(every_10_minutes(kind, start_at=T0, end_at=end))
    ran = []
    while clock.now() < MIDNIGHT + timedelta(hours=2):
        ran += [e.occurrence_at for e in await run_due(scheduler) if e.kind.value == "succeeded"]
        clock.advance(MIN)
    assert info.next_run_time == MIDNIGHT
    assert ran == [MIDNIGHT, MIDNIGHT + 10 * MIN, MIDNIGHT + 20 * MIN]
    assert (await scheduler.bus.get_task("t")).ended_at == MIDNIGHT + 20 * MIN
    clock.advance(timedelta(days=7))
    assert await scheduler.list_tasks() == []
    with pytest.raises(TaskNotFoundError):
        await scheduler.bus.get_task("t")


@KINDS
async def test_end_at_on_an_occurrence_includes_it(
    scheduler: BackgroundTaskScheduler, clock: ManualClock, kind: str
) -> None:
    """An occurrence exactly at end_at runs; it is the last."""
    end = MIDNIGHT + 10 * MIN
    await scheduler.bus.schedule_task(every_10_minutes(kind, start_at=T0, end_at=end))
    await run_due(scheduler)
    clock.set(end)
    events = await run_due(scheduler)
    assert seen(events) == [("started", end, 1), ("succeeded", end, 1)]
    assert [(t.id, t.ended_at) for t in await scheduler.list_tasks()] == [("t", end)]


@KINDS
async def test_a_backlog_past_end_at_is_missed_and_the_task_ends(
    scheduler: BackgroundTaskScheduler, clock: ManualClock, kind: str
) -> None:
    """Occurrences up to end_at that came while nothing ran are missed; none after end_at
    is counted, and the task ends."""
    await scheduler.bus.schedule_task(
        every_10_minutes(kind, start_at=T0, end_at=MIDNIGHT + 25 * MIN)
    )
    clock.set(MIDNIGHT + timedelta(hours=5))
    assert seen(await run_due(scheduler)) == [("missed", MIDNIGHT, 3)]
    assert await scheduler.list_tasks() == []


@KINDS
async def test_resuming_a_task_after_its_end_at_ends_it(
    scheduler: BackgroundTaskScheduler, clock: ManualClock, kind: str
) -> None:
    """A task paused until its end_at passed has nothing left to run: resuming ends it."""
    end = MIDNIGHT + 25 * MIN
    await scheduler.bus.schedule_task(every_10_minutes(kind, start_at=T0, end_at=end))
    await scheduler.bus.pause_task("t")
    clock.set(end + MIN)
    await scheduler.bus.resume_task("t")
    assert await scheduler.list_tasks() == []


@KINDS
async def test_a_task_whose_end_at_has_passed_is_refused_and_nothing_is_written(
    scheduler: BackgroundTaskScheduler, clock: ManualClock, kind: str
) -> None:
    """Scheduling a task that could only miss its occurrences raises and stores nothing."""
    clock.set(MIDNIGHT + timedelta(hours=1))
    descriptor = every_10_minutes(kind, start_at=MIDNIGHT, end_at=MIDNIGHT + 20 * MIN)
    with pytest.raises(InvalidTriggerError, match="would never run") as caught:
        await scheduler.bus.schedule_task(descriptor)
    assert "misfire_grace_time" in str(caught.value)
    assert await scheduler.list_tasks() == []


async def test_an_interval_past_the_end_of_the_calendar_is_refused_naming_it(
    scheduler: BackgroundTaskScheduler,
) -> None:
    """An interval of 10**12 s has no occurrence before year 9999: a clear error, no
    OverflowError, nothing stored."""
    descriptor = RecurrentTaskDescriptor(id="t", name="ScriptedJob", interval=10**12)
    with pytest.raises(InvalidTriggerError, match=r"interval=1000000000000\.0 s") as caught:
        await scheduler.bus.schedule_task(descriptor)
    assert "would never run" in str(caught.value)
    assert await scheduler.list_tasks() == []


async def test_a_start_at_at_the_end_of_the_calendar_runs_once_and_ends(
    scheduler: BackgroundTaskScheduler, clock: ManualClock
) -> None:
    """A grid whose next point would be past year 9999 has one occurrence, then ends."""
    last = datetime(9999, 12, 20, tzinfo=UTC)
    await scheduler.bus.schedule_task(
        RecurrentTaskDescriptor(id="t", name="ScriptedJob", interval=30 * 86400, start_at=last)
    )
    clock.set(last)
    assert [e.kind.value for e in await run_due(scheduler)] == ["started", "succeeded"]
    assert [(t.id, t.ended_at) for t in await scheduler.list_tasks()] == [("t", last)]
