"""A worker inside the app's own event loop (``run_worker=True``): against Redis, and its
graceful stop (docs/guides/workers.md, docs/reliability.md "A worker stopped").

These run on the wall clock (a real dispatcher loop); every wait is for a condition,
under a deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis

from cml_jobs import (
    BackgroundTaskScheduler,
    EventKind,
    Outcome,
    RecurrentTaskDescriptor,
    ScheduledTaskDescriptor,
    TaskEvent,
)
from cml_jobs.testing import InMemoryScheduleStore
from cml_jobs.worker import EventStream
from tests.fixtures.behaviour_jobs import GatedJob, OneShotJob

JOBS = ["tests.fixtures.behaviour_jobs"]
FAST = {"poll_interval": timedelta(milliseconds=100)}


async def collect(
    events: AsyncIterator[TaskEvent], done: Any, timeout: float = 30
) -> list[TaskEvent]:
    """Events from ``events`` until ``done(seen)`` is true, under a deadline."""
    seen: list[TaskEvent] = []
    async with asyncio.timeout(timeout):
        async for event in events:
            seen.append(event)
            if done(seen):
                return seen
    return seen


@pytest.mark.redis
async def test_run_worker_true_runs_tasks_inside_the_app_against_redis(
    redis_client: aioredis.Redis, redis_url: str, key_prefix: str
) -> None:
    """With a Redis URL and run_worker=True, the app's own loop claims and runs recurrent
    and one-time tasks, records them in Redis, and publishes their events to the stream."""
    OneShotJob.ran.clear()
    stream = EventStream(redis_client, prefix=key_prefix, batch=1000)
    scheduler = BackgroundTaskScheduler.configure(
        redis_url=redis_url,
        modules=JOBS,
        run_worker=True,
        key_prefix=key_prefix,
        queue_name=f"{key_prefix}queue",
        **FAST,
    )
    async with scheduler:
        events = scheduler.events()
        now = scheduler.clock.now()
        await scheduler.bus.schedule_task(
            RecurrentTaskDescriptor(id="every", name="ScriptedJob", interval=0.3)
        )
        await scheduler.bus.schedule_task(
            ScheduledTaskDescriptor(
                id="once", name="OneShotJob", scheduled_at=now + timedelta(milliseconds=300)
            )
        )

        def enough(seen: list[TaskEvent]) -> bool:
            ended = [(e.task_id, e.kind) for e in seen if e.kind is EventKind.SUCCEEDED]
            return ("once", EventKind.SUCCEEDED) in ended and ended.count(
                ("every", EventKind.SUCCEEDED)
            ) >= 2

        await collect(events, enough)
        every = await scheduler.bus.get_task("every")
        assert every.counts["succeeded"] >= 2 and every.last_outcome is Outcome.SUCCEEDED
        assert OneShotJob.ran == ["once"]
        ended = {t.id: t.last_outcome for t in await scheduler.list_tasks() if t.ended_at}
        assert ended == {"once": Outcome.SUCCEEDED}  # listed, ended, until its retention
        await scheduler.bus.cancel_task("every")
    published = [entry.event for entry in await stream.read()]
    assert ("once", EventKind.SUCCEEDED) in [(e.task_id, e.kind) for e in published]


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def where(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Where the in-app worker keeps its tasks: the embedded store, or the test's Redis.
    Either outlives the scheduler, so a second one can read what the first recorded."""
    if request.param == "memory":
        return {"redis_url": "memory://", "store": InMemoryScheduleStore()}
    prefix = request.getfixturevalue("key_prefix")
    return {
        "redis_url": request.getfixturevalue("redis_url"),
        "key_prefix": prefix,
        "queue_name": f"{prefix}queue",
    }


async def _start_gated_run(scheduler: BackgroundTaskScheduler) -> list[TaskEvent]:
    """Schedule a GatedJob task due now-ish; return once its run waits at the gate. The
    returned list keeps receiving the scheduler's events."""
    seen: list[TaskEvent] = []
    scheduler.subscribe(seen.append)
    start_at = scheduler.clock.now() + timedelta(seconds=1)
    info = await scheduler.bus.schedule_task(
        RecurrentTaskDescriptor(id="draining", name="GatedJob", interval=3600, start_at=start_at)
    )
    # Kept to the millisecond; a later first run would mean the schedule call came too late.
    assert info.next_run_time == start_at.replace(microsecond=start_at.microsecond // 1000 * 1000)
    async with asyncio.timeout(30):
        await GatedJob.waiting.wait()
    return seen


async def _recorded(where: dict[str, Any]) -> Any:
    """The task as the store recorded it, read by a fresh scheduler without a worker."""
    async with BackgroundTaskScheduler.configure(modules=JOBS, run_worker=False, **where) as app:
        return await app.bus.get_task("draining")


async def test_stop_lets_a_run_going_on_finish_within_the_drain_timeout_and_records_it(
    where: dict[str, Any],
) -> None:
    """stop() while a run goes on: stop waits for it (up to drain_timeout), the run
    finishes, and its outcome is recorded and emitted before stop returns."""
    GatedJob.reset()
    scheduler = BackgroundTaskScheduler.configure(
        modules=JOBS, run_worker=True, drain_timeout=timedelta(seconds=60), **FAST, **where
    )
    await scheduler.start()
    seen = await _start_gated_run(scheduler)
    stopping = asyncio.create_task(scheduler.stop())
    # Let stop get under way: the dispatcher stops and the drain begins. A drain that
    # did not wait would cancel the run now, and stop would end.
    await asyncio.sleep(0.3)
    assert not stopping.done()
    GatedJob.gate.set()
    async with asyncio.timeout(60):
        await stopping
    assert GatedJob.ran == ["draining"]
    assert [e.kind for e in seen if e.task_id == "draining"] == [
        EventKind.SCHEDULED,
        EventKind.STARTED,
        EventKind.SUCCEEDED,
    ]
    task = await _recorded(where)
    assert (task.last_outcome, task.counts, task.running) == (
        Outcome.SUCCEEDED,
        {"succeeded": 1},
        0,
    )


async def test_a_run_outlasting_the_drain_timeout_is_released_and_re_run_at_the_next_start(
    where: dict[str, Any],
) -> None:
    """drain_timeout=0.2 s and a run that does not end: stop cancels and releases the run,
    announced as interrupted and not recorded; the next start re-runs that occurrence at
    once, as the same attempt (1): a release is not a lost worker."""
    GatedJob.reset()
    first = BackgroundTaskScheduler.configure(
        modules=JOBS, run_worker=True, drain_timeout=timedelta(milliseconds=200), **FAST, **where
    )
    await first.start()
    seen = await _start_gated_run(first)
    async with asyncio.timeout(20):  # 100 times the drain timeout: stop does not wait the run out
        await first.stop()
    assert GatedJob.ran == []
    [started] = [e for e in seen if e.kind is EventKind.STARTED]
    assert [e.kind for e in seen if e.task_id == "draining"][-2:] == [
        EventKind.STARTED,
        EventKind.INTERRUPTED,
    ]
    task = await _recorded(where)
    assert (task.last_outcome, task.counts) == (None, {})

    GatedJob.gate.set()
    again = BackgroundTaskScheduler.configure(modules=JOBS, run_worker=True, **FAST, **where)
    events = again.events()  # before start: the re-run may begin within start itself
    async with again:
        rerun = await collect(events, lambda s: s[-1].kind is EventKind.SUCCEEDED)
    assert [(e.kind, e.attempt, e.occurrence_at) for e in rerun] == [
        (EventKind.STARTED, 1, started.occurrence_at),
        (EventKind.SUCCEEDED, 1, started.occurrence_at),
    ]
    assert GatedJob.ran == ["draining"]
