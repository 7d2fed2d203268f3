"""Lifecycle events in this process (``scheduler.subscribe``, ``scheduler.events()``) and
across processes (``EventStream.follow``), as docs/observability.md "Events" describes."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
import redis.asyncio as aioredis

from cml_jobs import (
    BackgroundTaskScheduler,
    EventKind,
    Outcome,
    RecurrentTaskDescriptor,
    TaskEvent,
)
from cml_jobs.testing import ManualClock, run_due
from cml_jobs.worker import EventStream, StreamEntry

JOBS = ["tests.fixtures.behaviour_jobs"]
BUFFER = 1000  # the documented backlog of an events() iterator


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def scheduler(clock: ManualClock) -> AsyncIterator[BackgroundTaskScheduler]:
    """An in-memory scheduler without a worker: the tests run due occurrences themselves."""
    app = BackgroundTaskScheduler.configure(modules=JOBS, clock=clock, run_worker=False)
    async with app:
        yield app


def task(task_id: str = "t", interval: float = 60) -> RecurrentTaskDescriptor:
    return RecurrentTaskDescriptor(id=task_id, name="ScriptedJob", interval=interval)


async def next_events(events: AsyncIterator[TaskEvent], count: int) -> list[TaskEvent]:
    """The next ``count`` events of an iterator that already holds them."""
    async with asyncio.timeout(10):
        return [await anext(events) for _ in range(count)]


async def test_events_iterates_over_every_event_from_the_moment_it_is_called(
    scheduler: BackgroundTaskScheduler, clock: ManualClock
) -> None:
    """``scheduler.events()`` yields the events emitted after it was called, in order,
    even those emitted before the iteration began."""
    start = clock.now()
    await scheduler.bus.schedule_task(task("earlier"))  # before: not seen
    events = scheduler.events()
    await scheduler.bus.schedule_task(task())
    clock.advance(seconds=60)
    await run_due(scheduler)
    seen = await next_events(events, 5)
    assert [(e.kind.value, e.task_id) for e in seen] == [
        ("scheduled", "t"),
        ("started", "earlier"),
        ("succeeded", "earlier"),
        ("started", "t"),
        ("succeeded", "t"),
    ]
    assert seen[0].occurrence_at == start + timedelta(seconds=60)
    assert all(e.job_name == "ScriptedJob" for e in seen)


async def test_an_iterator_that_falls_more_than_1000_events_behind_loses_its_oldest(
    scheduler: BackgroundTaskScheduler,
) -> None:
    """1,500 events while nobody reads: the iterator keeps the newest 1,000, in order, and
    the emitter never waits for it."""
    events = scheduler.events()
    for n in range(1500):
        await scheduler.bus.schedule_task(task(f"t{n:04}"))
    kept = await next_events(events, BUFFER)
    assert [e.task_id for e in kept] == [f"t{n:04}" for n in range(500, 1500)]
    await scheduler.bus.pause_task("t0000")  # nothing else is left in between
    [marker] = await next_events(events, 1)
    assert (marker.kind, marker.task_id) == (EventKind.PAUSED, "t0000")


async def test_each_iterator_gets_every_event_independently(
    scheduler: BackgroundTaskScheduler,
) -> None:
    """Two iterators both receive each event; one lagging does not affect the other."""
    first, second = scheduler.events(), scheduler.events()
    await scheduler.bus.schedule_task(task("a"))
    assert [e.task_id for e in await next_events(first, 1)] == ["a"]
    await scheduler.bus.schedule_task(task("b"))
    assert [e.task_id for e in await next_events(second, 2)] == ["a", "b"]
    assert [e.task_id for e in await next_events(first, 1)] == ["b"]


async def test_a_failing_subscriber_is_logged_and_ignored(
    scheduler: BackgroundTaskScheduler, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A callback that raises is logged (with its traceback) on cml_jobs.events for each
    event; scheduling and runs go on, and the other subscribers get every event."""

    def broken(event: TaskEvent) -> None:
        raise RuntimeError(f"observer bug on {event.kind.value}")

    received: list[TaskEvent] = []
    scheduler.subscribe(broken)
    scheduler.subscribe(received.append)
    with caplog.at_level(logging.ERROR, logger="cml_jobs.events"):
        await scheduler.bus.schedule_task(task())
        clock.advance(seconds=60)
        await run_due(scheduler)
    assert [e.kind.value for e in received] == ["scheduled", "started", "succeeded"]
    assert (await scheduler.bus.get_task("t")).last_outcome is Outcome.SUCCEEDED
    logged = [r for r in caplog.records if r.name == "cml_jobs.events"]
    assert [r.levelno for r in logged] == [logging.ERROR] * 3
    assert all(r.exc_info and "observer bug" in str(r.exc_info[1]) for r in logged)


async def test_unsubscribing_stops_the_callbacks(scheduler: BackgroundTaskScheduler) -> None:
    """The function subscribe returns removes the callback."""
    received: list[TaskEvent] = []
    unsubscribe = scheduler.subscribe(received.append)
    await scheduler.bus.schedule_task(task("a"))
    unsubscribe()
    await scheduler.bus.schedule_task(task("b"))
    assert [e.task_id for e in received] == ["a"]


async def test_cancel_pause_and_resume_emit_their_events(
    scheduler: BackgroundTaskScheduler, clock: ManualClock
) -> None:
    """The bus emits paused, resumed (with the next occurrence) and cancelled, each with
    the task id, its job's name and the time it happened."""
    start = clock.now()
    received: list[TaskEvent] = []
    scheduler.subscribe(received.append)
    await scheduler.bus.schedule_task(task())
    clock.advance(seconds=10)
    await scheduler.bus.pause_task("t")
    clock.advance(seconds=100)
    await scheduler.bus.resume_task("t")
    clock.advance(seconds=5)
    assert await scheduler.bus.cancel_task("t") == 0
    assert [(e.kind, e.task_id, e.job_name, e.at - start) for e in received] == [
        (EventKind.SCHEDULED, "t", "ScriptedJob", timedelta(0)),
        (EventKind.PAUSED, "t", "ScriptedJob", timedelta(seconds=10)),
        (EventKind.RESUMED, "t", "ScriptedJob", timedelta(seconds=110)),
        (EventKind.CANCELLED, "t", "ScriptedJob", timedelta(seconds=115)),
    ]
    resumed = received[2]
    assert resumed.occurrence_at == start + timedelta(seconds=120)  # back on its grid


async def test_every_event_of_the_bus_and_its_operations_names_the_job(
    scheduler: BackgroundTaskScheduler, clock: ManualClock
) -> None:
    """Through scheduler.events(): each event a task goes through, from schedule to
    cancel (operators' ones included: update, trigger, unpark), carries its job's name."""
    events = scheduler.events()
    await scheduler.bus.schedule_task(task())
    await scheduler.bus.pause_task("t", note="maintenance")
    await scheduler.bus.resume_task("t")
    await scheduler.bus.update_task(task(interval=120))
    await scheduler.bus.trigger_task("t")
    clock.advance(seconds=1)
    await run_due(scheduler)  # the triggered run: started, succeeded
    await scheduler.bus.cancel_task("t")
    received = await next_events(events, 7)
    assert [e.kind for e in received] == [
        EventKind.SCHEDULED,
        EventKind.PAUSED,
        EventKind.RESUMED,
        EventKind.SCHEDULED,
        EventKind.STARTED,
        EventKind.SUCCEEDED,
        EventKind.CANCELLED,
    ]
    assert {e.job_name for e in received} == {"ScriptedJob"}


async def _blocked_in_xread(client: aioredis.Redis, name: str) -> None:
    """Wait until the connection named ``name`` is blocked in XREAD: following."""
    async with asyncio.timeout(10):
        while True:
            for connection in await client.client_list():
                if connection.get("name") == name and connection.get("cmd") == "xread":
                    if "b" in connection.get("flags", ""):
                        return
            await asyncio.sleep(0.01)


@pytest.mark.redis
async def test_follow_without_a_position_reads_from_now_on(
    redis_client: aioredis.Redis, redis_url: str, key_prefix: str
) -> None:
    """``EventStream.follow(after=None)`` skips what the stream already held and yields
    what comes after, here an app's paused, resumed and cancelled events."""
    app = BackgroundTaskScheduler.configure(
        redis_url=redis_url, modules=JOBS, key_prefix=key_prefix, queue_name=f"{key_prefix}q"
    )
    name = f"follower-{uuid.uuid4().hex[:8]}"
    follower_client = aioredis.Redis.from_url(redis_url, client_name=name)
    stream = EventStream(follower_client, prefix=key_prefix, block=timedelta(seconds=5))
    try:
        async with app:
            await app.bus.schedule_task(task(interval=3600))
            async with asyncio.timeout(10):
                while True:  # until the "scheduled" event is in the stream
                    if await stream.last_id() != "0-0":
                        break
                    await asyncio.sleep(0.01)

            async def follow() -> list[StreamEntry]:
                seen = []
                async for entry in stream.follow():
                    seen.append(entry)
                    if entry.event.kind is EventKind.CANCELLED:
                        return seen
                return seen

            following = asyncio.create_task(follow())
            await _blocked_in_xread(redis_client, name)
            await app.bus.pause_task("t")
            await app.bus.resume_task("t")
            await app.bus.cancel_task("t")
            async with asyncio.timeout(10):
                seen = await following
    finally:
        await follower_client.aclose()
    assert [(e.event.kind.value, e.event.task_id) for e in seen] == [
        ("paused", "t"),
        ("resumed", "t"),
        ("cancelled", "t"),
    ]
