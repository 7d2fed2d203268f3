"""The lost-worker rule (docs/reliability.md): a run whose worker is lost is re-run after
its lease, as the next attempt; a run whose worker was lost three times in a row is
recorded as failed instead of re-run.

A "lost worker" here is a scheduler of its own (a second process, sharing the store and
the clock) whose ``run_due`` never comes back (its job waits at a gate), so it renews no
lease: exactly what another worker sees of a killed or frozen one. Time is a
``ManualClock``; nothing sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta

import pytest

from cml_jobs import (
    BackgroundTaskScheduler,
    EventKind,
    Outcome,
    RecurrentTaskDescriptor,
    TaskEvent,
)
from cml_jobs.stores import ScheduleStore
from cml_jobs.testing import ManualClock, run_due
from tests.fixtures.behaviour_jobs import GatedJob

LEASE = timedelta(seconds=10)
INTERVAL = timedelta(hours=1)


def _worker(store: ScheduleStore, clock: ManualClock) -> BackgroundTaskScheduler:
    """A scheduler that plays one worker process over the shared store."""
    return BackgroundTaskScheduler.configure(
        modules=["tests.fixtures.behaviour_jobs"],
        store=store,
        clock=clock,
        run_worker=False,
        lease=LEASE,
    )


async def _arrival() -> None:
    """Wait until a run reaches the job's gate, then re-arm the signal for the next one."""
    async with asyncio.timeout(10):
        await GatedJob.waiting.wait()
    GatedJob.waiting.clear()


async def test_a_run_whose_worker_is_lost_three_times_is_recorded_failed_not_run_again(
    store: ScheduleStore, caplog: pytest.LogCaptureFixture
) -> None:
    """Attempts 1, 2 and 3 each lose their worker (no heartbeat past the lease); the next
    look records the occurrence as failed, starts no 4th attempt, and the schedule goes on.
    The lost runs' late outcomes are refused."""
    GatedJob.reset()
    clock = ManualClock()
    scheduler = _worker(store, clock)
    async with scheduler, contextlib.AsyncExitStack() as workers:
        starts: list[TaskEvent] = []
        scheduler.subscribe(lambda e: starts.append(e) if e.kind is EventKind.STARTED else None)
        begin = clock.now()
        await scheduler.bus.schedule_task(
            RecurrentTaskDescriptor(id="lossy", name="GatedJob", interval=INTERVAL)
        )
        clock.advance(INTERVAL)
        lost = []
        for attempt in (1, 2, 3):
            doomed = await workers.enter_async_context(_worker(store, clock))
            doomed.subscribe(lambda e: starts.append(e) if e.kind is EventKind.STARTED else None)
            lost.append(asyncio.create_task(run_due(doomed)))  # never reports back
            await _arrival()
            assert [e.attempt for e in starts] == list(range(1, attempt + 1))
            clock.advance(LEASE + timedelta(seconds=1))  # its lease runs out

        with caplog.at_level(logging.ERROR, logger="cml_jobs.dispatch"):
            async with asyncio.timeout(10):  # a 4th attempt would wait at the gate
                await run_due(scheduler)
        assert [e.attempt for e in starts] == [1, 2, 3]  # no 4th start
        assert {e.occurrence_at for e in starts} == {begin + INTERVAL}
        task = await scheduler.bus.get_task("lossy")
        assert task.last_outcome is Outcome.FAILED
        assert task.last_error == "worker lost during 3 attempts; not re-run"
        assert task.counts == {"failed": 1}
        assert (task.running, task.next_run_time) == (0, begin + 2 * INTERVAL)
        [record] = [
            r
            for r in caplog.records
            if r.name == "cml_jobs.dispatch" and r.levelno >= logging.ERROR
        ]
        assert "task 'lossy': worker lost during 3 attempts" in record.getMessage()

        GatedJob.gate.set()  # the lost workers come back, too late
        async with asyncio.timeout(10):
            await asyncio.gather(*lost)
        assert GatedJob.ran == ["lossy"] * 3
        after = await scheduler.bus.get_task("lossy")
        assert (after.last_outcome, after.counts, after.running) == (
            Outcome.FAILED,
            {"failed": 1},
            0,
        )


async def test_a_run_whose_worker_is_lost_once_is_re_run_as_attempt_2_and_recorded(
    store: ScheduleStore,
) -> None:
    """One lost worker: the occurrence is re-run after the lease as attempt 2, and that
    run's outcome is the one recorded."""
    GatedJob.reset()
    clock = ManualClock()
    scheduler, doomed = _worker(store, clock), _worker(store, clock)
    async with scheduler, doomed:
        await scheduler.bus.schedule_task(
            RecurrentTaskDescriptor(id="once-lost", name="GatedJob", interval=INTERVAL)
        )
        clock.advance(INTERVAL)
        lost = asyncio.create_task(run_due(doomed))
        await _arrival()
        clock.advance(LEASE / 2)
        assert await run_due(scheduler) == []  # the lease still holds: nothing to re-run
        clock.advance(LEASE / 2 + timedelta(seconds=1))
        GatedJob.gate.set()  # the re-run passes its gate; the lost one is released too
        events = await run_due(scheduler)
        assert [(e.kind, e.attempt) for e in events if e.attempt == 2] == [
            (EventKind.STARTED, 2),
            (EventKind.SUCCEEDED, 2),
        ]
        async with asyncio.timeout(10):
            await lost
        task = await scheduler.bus.get_task("once-lost")
        assert (task.last_outcome, task.counts, task.running) == (
            Outcome.SUCCEEDED,
            {"succeeded": 1},
            0,
        )
