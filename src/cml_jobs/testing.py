"""Test helpers for users' own job tests: a clock you move by hand, and a way to run
whatever is due now, in-process, without Redis, arq or sleeps.

Example:
    ```python
    clock = ManualClock()
    scheduler = BackgroundTaskScheduler.configure(modules=["myapp.jobs"], clock=clock,
                                                  run_worker=False)
    async with scheduler:
        await scheduler.bus.schedule_task(RecurrentTaskDescriptor(
            id="t", name="MyJob", data={}, interval=60))
        clock.advance(seconds=60)
        events = await run_due(scheduler)
        assert [e.kind for e in events] == [EventKind.STARTED, EventKind.SUCCEEDED]
    ```
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone

from cml_jobs._descriptors import TaskDescriptor
from cml_jobs._dispatch import Dispatcher
from cml_jobs._events import TaskEvent
from cml_jobs._execution import Executor, Handoff
from cml_jobs._scheduler import BackgroundTaskScheduler
from cml_jobs.stores._base import Run
from cml_jobs.stores.memory import InMemoryScheduleStore

__all__ = ["InMemoryScheduleStore", "ManualClock", "run_due"]

_EPOCH = datetime(2030, 1, 1, tzinfo=timezone.utc)


class ManualClock:
    """A clock that moves only when told to.

    Args:
        start: the initial time (aware); 2030-01-01 00:00 UTC by default.
    """

    def __init__(self, start: datetime | None = None) -> None:
        if start is not None and start.tzinfo is None:
            raise ValueError(f"ManualClock needs an aware datetime, got {start!r}")
        self._now = (start or _EPOCH).astimezone(timezone.utc)

    def now(self) -> datetime:
        """The clock's current time."""
        return self._now

    def advance(self, delta: timedelta | None = None, *, seconds: float = 0) -> datetime:
        """Move the clock forward (or back, with a negative delta). Returns the new time."""
        self._now += (delta or timedelta(0)) + timedelta(seconds=seconds)
        return self._now

    def set(self, at: datetime) -> None:
        """Jump to ``at`` (aware)."""
        self._now = at.astimezone(timezone.utc)

    def __repr__(self) -> str:
        return f"ManualClock({self._now.isoformat()!r})"


class _InlineSink:
    """Runs each claimed occurrence right away, one after another, and waits for it."""

    def __init__(self, executor: Executor, room: int) -> None:
        self.executor = executor
        self._room = room

    def room(self) -> int:
        return self._room

    async def submit(self, runs: Sequence[Run], descriptors: Mapping[str, TaskDescriptor]) -> None:
        for run in runs:
            descriptor = descriptors.get(run.task_id)
            work = (
                self.executor.execute(run)
                if descriptor is None
                else self.executor.execute_claimed(run, descriptor)
            )
            # Each run gets its own task, as in a worker (per-run resources).
            outcome = await asyncio.create_task(work)
            assert outcome is Handoff.DONE


async def run_due(scheduler: BackgroundTaskScheduler, *, max_ticks: int = 1000) -> list[TaskEvent]:
    """Run every occurrence due at the scheduler's clock's current time, then return.

    Occurrences run one after another in this task; missed and skipped ones are recorded
    as they would be by a worker.

    Returns:
        The lifecycle events emitted meanwhile, in order.
    """
    runtime = scheduler.runtime
    assert runtime.executor is not None
    dispatcher = Dispatcher(
        store=runtime.store,
        clock=runtime.clock,
        sink=_InlineSink(runtime.executor, runtime.settings.batch_size),
        hub=runtime.hub,
        lease=runtime.settings.lease,
        batch=runtime.settings.batch_size,
    )
    events: list[TaskEvent] = []
    unsubscribe = runtime.hub.subscribe(events.append)
    try:
        for _ in range(max_ticks):
            report = await dispatcher.tick()
            if not (report.claimed or report.reissued or report.full):
                break
    finally:
        unsubscribe()
    return events
