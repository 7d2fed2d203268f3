"""What operators do to tasks: trigger, backfill, unpark, pause with a note, preview."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import pytest

from cml_jobs import (
    BackgroundTaskScheduler,
    CronTaskDescriptor,
    InvalidTaskDataError,
    Outcome,
    RecurrentTaskDescriptor,
    TaskParkedError,
    UnknownJobError,
)
from cml_jobs._descriptors import encode_descriptor
from cml_jobs.stores import Decision, NewTask, ScheduleStore
from cml_jobs.testing import ManualClock, run_due
from tests.fixtures.ops_jobs import AccountSyncJob
from tests.workers import until

JOBS = ["tests.fixtures.ops_jobs"]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def scheduler(
    store: ScheduleStore, clock: ManualClock
) -> AsyncIterator[BackgroundTaskScheduler]:
    """A scheduler over each store, with no worker: tests run due occurrences themselves."""
    AccountSyncJob.runs.clear()
    app = BackgroundTaskScheduler.configure(
        modules=JOBS, store=store, clock=clock, run_worker=False
    )
    async with app:
        yield app


def sync(task_id: str = "sync", **options: object) -> RecurrentTaskDescriptor:
    return RecurrentTaskDescriptor(
        id=task_id, name="AccountSyncJob", data={"email": "a@example.com"}, **options
    )


async def test_trigger_task_runs_once_now_outside_the_schedule(
    scheduler: BackgroundTaskScheduler, clock: ManualClock
) -> None:
    """A triggered run is an occurrence of its own, at the call's time; the schedule is
    unchanged, and the run is in the history."""
    info = await scheduler.bus.schedule_task(sync(interval=3600))
    at = await scheduler.bus.trigger_task("sync")
    assert at == clock.now()
    await run_due(scheduler)
    await run_due(scheduler)
    assert AccountSyncJob.runs == [("sync", at)]
    task = await scheduler.bus.get_task("sync")
    assert (task.next_run_time, task.running) == (info.next_run_time, 0)
    [row] = await scheduler.bus.get_history("sync")
    assert (row.occurrence_at, row.outcome) == (at, Outcome.SUCCEEDED)


async def test_backfill_runs_each_occurrence_of_a_past_window_once(
    scheduler: BackgroundTaskScheduler, clock: ManualClock
) -> None:
    """A 10-occurrence window: each occurrence runs once, oldest first, one at a time
    (max_instances=1), however late; the schedule goes on."""
    now = clock.now()
    await scheduler.bus.schedule_task(sync(interval=60, start_at=now - timedelta(hours=1)))
    start, end = now - timedelta(minutes=30), now - timedelta(minutes=21)
    queued = await scheduler.bus.backfill("sync", start, end)
    window = [start + timedelta(minutes=k) for k in range(10)]
    assert queued == window
    for _ in range(30):
        clock.advance(seconds=1)
        await run_due(scheduler)
    assert [at for _, at in AccountSyncJob.runs] == window
    task = await scheduler.bus.get_task("sync")
    assert task.running == 0 and task.next_run_time == now + timedelta(minutes=1)
    # The occurrence due at `now` came while the backfill held the task: skipped.
    assert task.counts == {"succeeded": 10, "skipped": 1}


async def test_backfill_refuses_a_window_in_the_future_or_too_large(
    scheduler: BackgroundTaskScheduler, clock: ManualClock
) -> None:
    """A window that is reversed, not past, or holds over 1000 occurrences is refused, and
    nothing is queued."""
    await scheduler.bus.schedule_task(sync(interval=1))
    now = clock.now()
    with pytest.raises(ValueError, match="start <= end <= now"):
        await scheduler.bus.backfill("sync", now, now + timedelta(seconds=5))
    with pytest.raises(ValueError, match="smaller windows"):
        await scheduler.bus.backfill("sync", now - timedelta(hours=1), now)
    assert (await scheduler.bus.get_task("sync")).running == 0


async def _parked(store: ScheduleStore, task_id: str, descriptor_json: str, now: datetime) -> None:
    """A task written around the bus, then parked as a dispatcher parks one."""
    await store.add(NewTask(task_id, descriptor_json, now, now), replace=False)
    decision = Decision(task_id, now, None, None, park_reason="data no longer fits the job")
    await store.claim([decision], lease_until=now)


async def test_unpark_of_a_task_that_still_cannot_run_changes_nothing(
    scheduler: BackgroundTaskScheduler, store: ScheduleStore, clock: ManualClock
) -> None:
    """A parked task whose data does not fit its job, or whose job is unknown, stays
    parked, unchanged, and the error says why."""
    now = clock.now()
    bad_data = '{"kind":"recurrent","id":"bad","name":"AccountSyncJob","data":{},"interval":60}'
    no_job = '{"kind":"recurrent","id":"gone","name":"GoneJob","interval":60}'
    await _parked(store, "bad", bad_data, now)
    await _parked(store, "gone", no_job, now)
    before = await scheduler.list_tasks()
    with pytest.raises(InvalidTaskDataError, match=r"'bad' still cannot run.*email"):
        await scheduler.bus.unpark_task("bad")
    with pytest.raises(UnknownJobError, match=r"'gone' still cannot run.*GoneJob"):
        await scheduler.bus.unpark_task("gone")
    assert await scheduler.list_tasks() == before
    with pytest.raises(TaskParkedError, match="unpark_task"):
        await scheduler.bus.trigger_task("bad")


async def test_unpark_resumes_a_task_that_can_run_again(
    scheduler: BackgroundTaskScheduler, store: ScheduleStore, clock: ManualClock
) -> None:
    """Once its descriptor passes the checks, an unparked task is back in the schedule
    from its next occurrence, with its counts."""
    now = clock.now()
    await _parked(store, "sync", encode_descriptor(sync(interval=60)), now)
    clock.advance(seconds=90)
    info = await scheduler.bus.unpark_task("sync")
    assert info.parked_reason is None and info.counts == {"parked": 1}
    assert info.next_run_time == now + timedelta(seconds=120)
    clock.advance(seconds=30)
    await run_due(scheduler)
    assert AccountSyncJob.runs == [("sync", now + timedelta(seconds=120))]


async def test_pause_keeps_a_note_until_resumed(scheduler: BackgroundTaskScheduler) -> None:
    """The note given to pause_task shows in TaskInfo while paused."""
    await scheduler.bus.schedule_task(sync(interval=60))
    await scheduler.bus.pause_task("sync", note="migrating the accounts table")
    task = await scheduler.bus.get_task("sync")
    assert (task.paused, task.note) == (True, "migrating the accounts table")
    await scheduler.bus.resume_task("sync")
    assert (await scheduler.bus.get_task("sync")).note is None


async def test_upcoming_gives_the_next_occurrences_by_trigger_arithmetic(
    scheduler: BackgroundTaskScheduler, clock: ManualClock
) -> None:
    """For a descriptor at once; for a stored task from its next due time."""
    now = clock.now()
    hourly = CronTaskDescriptor(id="c", name="AccountSyncJob", data={"email": ""}, cron="0 * * * *")
    hours = [now + timedelta(hours=k) for k in (0, 1, 2)]  # at or after now
    assert scheduler.bus.upcoming(hourly, 3) == hours
    await scheduler.bus.schedule_task(sync(interval=60))
    minutes = [now + timedelta(minutes=k) for k in (1, 2)]
    assert await scheduler.bus.upcoming("sync", 2) == minutes
    await scheduler.bus.pause_task("sync")
    assert await scheduler.bus.upcoming("sync", 2) == []


@pytest.fixture(
    params=[
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
def shared_store(request: pytest.FixtureRequest) -> dict[str, str]:
    """How processes name one shared store of the test's own: a Redis prefix, or a
    PostgreSQL schema."""
    if request.param == "postgres":
        return {"store_url": request.getfixturevalue("postgres_url")}
    redis_url: str = request.getfixturevalue("redis_url")
    return {"redis_url": redis_url, "key_prefix": request.getfixturevalue("key_prefix")}


async def test_trigger_task_runs_exactly_once_with_three_workers(
    shared_store: dict[str, str],
) -> None:
    """Three in-process workers on one shared store: a triggered run runs once."""
    AccountSyncJob.runs.clear()
    apps = [
        BackgroundTaskScheduler.configure(
            modules=JOBS,
            **shared_store,
            run_worker=True,
            poll_interval=timedelta(milliseconds=50),
        )
        for _ in range(3)
    ]
    for app in apps:
        await app.start()
    try:
        bus = apps[0].bus
        await bus.schedule_task(sync(interval=3600))
        at = await bus.trigger_task("sync")

        async def done() -> bool:
            rows = await bus.get_history("sync") if AccountSyncJob.runs else []
            return bool(rows) and (await bus.get_task("sync")).running == 0

        await until(done, "the triggered run finished")
        await asyncio.sleep(0)  # nothing can run it again: the store holds no run of it
        assert AccountSyncJob.runs == [("sync", at)]
        assert [row.occurrence_at for row in await bus.get_history("sync")] == [at]
        assert len(await bus.list_workers()) == 3
    finally:
        for app in apps:
            await app.stop()
