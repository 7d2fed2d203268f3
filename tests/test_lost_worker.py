"""The lost-worker rule (docs/reliability.md): a run whose worker is lost is re-run after
its lease, as the next attempt; a run whose worker was lost three times in a row is
recorded as failed instead of re-run, and announced, counted and logged as such. A run
given back by a worker that stops cleanly is re-run at once as the same attempt: a
rolling restart is not a lost worker.

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
    ScheduledTaskDescriptor,
    TaskEvent,
)
from cml_jobs.stores import ScheduleStore
from cml_jobs.testing import ManualClock, run_due
from tests.fixtures.behaviour_jobs import GatedJob
from tests.otel_sdk import attrs, delta, fresh_sdk

LEASE = timedelta(seconds=10)
INTERVAL = timedelta(hours=1)


def _worker(
    store: ScheduleStore, clock: ManualClock, *, running: bool = False
) -> BackgroundTaskScheduler:
    """A scheduler that plays one worker process over the shared store (``running``: it
    dispatches and executes by itself, as a worker does, instead of through ``run_due``)."""
    return BackgroundTaskScheduler.configure(
        modules=["tests.fixtures.behaviour_jobs"],
        store=store,
        clock=clock,
        run_worker=running,
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
    The lost runs' late outcomes are refused. Giving up is announced (a failed event),
    counted in cml_jobs.runs and logged once."""
    GatedJob.reset()
    sdk = fresh_sdk()
    before = sdk.points()
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
                events = await run_due(scheduler)
        assert [e.attempt for e in starts] == [1, 2, 3]  # no 4th start
        error = "worker lost during 3 attempts; not re-run"
        assert [(e.kind, e.task_id, e.job_name, e.attempt, e.error) for e in events] == [
            (EventKind.FAILED, "lossy", "GatedJob", 3, error)
        ]
        assert events[0].occurrence_at == begin + INTERVAL
        counted = delta(before, sdk.points())
        failed = attrs(
            messaging__system="cml_jobs",
            messaging__destination__name="GatedJob",
            cml_jobs__outcome="failed",
            error__type="WorkerLost",
        )
        assert counted[("cml_jobs.runs", failed)] == 1
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


async def _claimed(store: ScheduleStore, task_id: str) -> None:
    """Wait until a worker has claimed the task's run."""
    async with asyncio.timeout(10):
        while True:
            state = await store.get(task_id)
            if state is not None and state.running:
                return
            await asyncio.sleep(0.01)


async def test_a_run_given_back_by_three_clean_stops_in_a_row_runs_on_the_fourth_worker(
    store: ScheduleStore,
) -> None:
    """A rolling restart: a one-time task's worker stops cleanly (stop with a drain
    timeout of 0) once before the run starts and twice while it runs. Each time the run is
    given back and re-issued at once, as the same attempt (no lease expires here), so the
    4th worker runs it to completion: a release is not a lost worker."""
    GatedJob.reset()
    clock = ManualClock()
    seen: list[TaskEvent] = []
    async with _worker(store, clock) as app:
        due = clock.now() + timedelta(milliseconds=3)  # claimed within the lookahead
        await app.bus.schedule_task(
            ScheduledTaskDescriptor(id="once", name="GatedOnceJob", scheduled_at=due)
        )
        for stop in ("before the start", "mid-run", "mid-run"):
            worker = _worker(store, clock, running=True)
            worker.subscribe(seen.append)  # before its start, which may start the run
            await worker.start()
            if stop == "before the start":
                await _claimed(store, "once")  # it waits for its time, which never comes
            else:
                await _arrival()
            await worker.stop(drain_timeout=timedelta(0))
            clock.advance(timedelta(milliseconds=3))  # after the first stop, it is due
        GatedJob.gate.set()
        succeeded = asyncio.Event()
        last = _worker(store, clock, running=True)
        last.subscribe(lambda e: succeeded.set() if e.kind is EventKind.SUCCEEDED else None)
        last.subscribe(seen.append)
        async with last, asyncio.timeout(10):
            await succeeded.wait()
        state = await store.get("once")  # kept, ended, by the stores that keep history
    assert GatedJob.ran == ["once"]
    assert [(e.kind, e.attempt) for e in seen] == [
        (EventKind.INTERRUPTED, 1),  # given back before it started
        (EventKind.STARTED, 1),
        (EventKind.INTERRUPTED, 1),
        (EventKind.STARTED, 1),
        (EventKind.INTERRUPTED, 1),
        (EventKind.STARTED, 1),
        (EventKind.SUCCEEDED, 1),
    ]
    assert {e.occurrence_at for e in seen} == {due}
    assert state is None or (state.last_outcome, state.counts, state.running) == (
        Outcome.SUCCEEDED,
        {"succeeded": 1},
        0,
    )
