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
import contextlib
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta, timezone

from cml_jobs._dispatch import Dispatcher
from cml_jobs._events import TaskEvent
from cml_jobs._execution import Assignment, Executor
from cml_jobs._runtime import new_dispatcher
from cml_jobs._scheduler import BackgroundTaskScheduler
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
        self._sleepers: list[tuple[datetime, asyncio.Future[None]]] = []
        self._jumping = 0

    @contextlib.contextmanager
    def jumping(self) -> Iterator[None]:
        """Within this block, ``sleep`` moves the clock on by the time asked instead of
        waiting for ``advance`` (``run_due`` uses it for retry backoff)."""
        self._jumping += 1
        try:
            yield
        finally:
            self._jumping -= 1

    def now(self) -> datetime:
        """The clock's current time."""
        return self._now

    async def sleep(self, seconds: float) -> None:
        """Wait until the clock has been moved ``seconds`` on (``advance``, ``set``)."""
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        if self._jumping:  # run_due: the time a run waits passes at once
            self.advance(seconds=seconds)
            await asyncio.sleep(0)
            return
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        sleeper = (self._now + timedelta(seconds=seconds), woken)
        self._sleepers.append(sleeper)
        try:
            await woken
        finally:
            self._sleepers.remove(sleeper)

    def advance(self, delta: timedelta | None = None, *, seconds: float = 0) -> datetime:
        """Move the clock forward (or back, with a negative delta), waking the sleeps that
        are over. Returns the new time."""
        self.set(self._now + (delta or timedelta(0)) + timedelta(seconds=seconds))
        return self._now

    def set(self, at: datetime) -> None:
        """Jump to ``at`` (aware), waking the sleeps that are over."""
        self._now = at.astimezone(timezone.utc)
        for deadline, woken in self._sleepers:
            if deadline <= self._now and not woken.done():
                woken.set_result(None)

    def __repr__(self) -> str:
        return f"ManualClock({self._now.isoformat()!r})"


class _InlineSink:
    """Runs each claimed occurrence right away, one after another, and waits for it."""

    def __init__(self, executor: Executor, room: int) -> None:
        self.executor = executor
        self._room = room

    def room(self) -> int:
        return self._room

    async def submit(self, assignments: Sequence[Assignment]) -> None:
        for assignment in assignments:
            # Each run gets its own task, as in a worker (per-run resources); a run stopped
            # because its task was cancelled ends its task, not run_due.
            await asyncio.wait([asyncio.create_task(self.executor.execute(assignment))])


async def run_due(scheduler: BackgroundTaskScheduler, *, max_ticks: int = 1000) -> list[TaskEvent]:
    """Run every occurrence due at the scheduler's clock's current time, then return.

    Occurrences run one after another in this task; missed and skipped ones are recorded
    as they would be by a worker. With a ``ManualClock``, the waits inside a run (retry
    backoff) move the clock on instead of waiting.

    Returns:
        The lifecycle events emitted meanwhile, in order.
    """
    runtime = scheduler.runtime
    executor = runtime.executor
    sink = _InlineSink(executor, runtime.settings.batch_size)
    dispatcher = new_dispatcher(runtime, sink, lookahead=timedelta(0))
    events: list[TaskEvent] = []
    unsubscribe = runtime.hub.subscribe(events.append)
    clock = runtime.clock
    jumping = clock.jumping() if isinstance(clock, ManualClock) else contextlib.nullcontext()
    try:
        with jumping:
            await _tick_until_idle(dispatcher, executor, max_ticks)
    finally:
        unsubscribe()
    return events


async def _tick_until_idle(dispatcher: Dispatcher, executor: Executor, max_ticks: int) -> None:
    for _ in range(max_ticks):
        # Runs going on in this process keep their leases, as the heartbeat would have
        # renewed them while the clock moved.
        await executor.renew(executor.store)
        report = await dispatcher.tick()
        if not (report.claimed or report.reissued or report.full):
            return
