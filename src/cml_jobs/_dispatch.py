"""Dispatch: claim due occurrences from the store and hand them to a sink as runs.

Every worker runs a dispatcher; any number may run at once. Each tick reads the due
tasks, decides in Python what each one does (``plan``: misfire grace, coalescing; or
park a task that cannot run; or leave a task whose job this worker lacks to one that has
it), and applies all decisions in one atomic store call that only succeeds for tasks
still in the state the decision was made from. So each occurrence becomes a run once,
whoever wins, and the claim decides that the run starts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Protocol

from cml_jobs import _telemetry
from cml_jobs._claims import ClaimReporter, TickReport
from cml_jobs._codec import DescriptorCodec
from cml_jobs._decide import Choice, Decider
from cml_jobs._events import EventHub
from cml_jobs._execution import Assignment
from cml_jobs._registry import JobRegistry
from cml_jobs._timing import Clock
from cml_jobs.exceptions import InvalidDescriptorError, StoreAccessError, StoreError
from cml_jobs.stores._base import ClaimResult, DueTask, Finish, Outcome, ScheduleStore
from cml_jobs.stores._ops import OperationsStore, RunRecord

__all__ = ["Dispatcher", "RunSink", "TickReport"]

logger = logging.getLogger("cml_jobs.dispatch")

#: A run whose worker was lost this many times is recorded as failed instead of re-run:
#: a job that kills its worker must not take down every worker in turn.
MAX_LOST_ATTEMPTS = 3
_RECLAIM_EVERY = timedelta(seconds=1)


class RunSink(Protocol):
    """Where claimed runs go: this worker's executor, the arq queue, or a test."""

    def room(self) -> int:
        """How many runs the sink takes now; the dispatcher claims no more than that."""
        ...

    async def submit(self, assignments: Sequence[Assignment]) -> None:
        """Hand over claimed runs."""
        ...


class Dispatcher:
    """Claims due occurrences and submits them as runs.

    Args:
        store: the schedule store.
        clock: the time; the dispatcher sleeps through it.
        sink: where runs go.
        hub: where lifecycle events go.
        registry: the jobs this worker has; tasks of other jobs are left to other workers.
        codec: how stored descriptors are read.
        lease: how long a claimed run may go without a renewal before it is re-issued.
        batch: the most tasks claimed per tick.
        poll_interval: the longest sleep between ticks (new tasks scheduled elsewhere are
            seen within it).
        lookahead: claim occurrences due up to this much ahead of now; the sink starts
            each run at its own time.
        unknown_job_grace: how long a task whose job no worker has run waits before it is
            parked.
        worker: this worker's id, for history rows.
    """

    def __init__(
        self,
        *,
        store: ScheduleStore,
        clock: Clock,
        sink: RunSink,
        hub: EventHub,
        registry: JobRegistry,
        codec: DescriptorCodec,
        lease: timedelta = timedelta(seconds=6),
        batch: int = 500,
        poll_interval: timedelta = timedelta(seconds=1),
        lookahead: timedelta = timedelta(0),
        unknown_job_grace: timedelta = timedelta(minutes=5),
        worker: str = "",
    ) -> None:
        self.store, self.clock, self.sink, self.hub = store, clock, sink, hub
        self.codec, self.lease, self.batch, self.lookahead = codec, lease, batch, lookahead
        self.decider = Decider(codec=codec, registry=registry, unknown_job_grace=unknown_job_grace)
        self.poll_interval = poll_interval
        self.reporter = ClaimReporter(clock=clock, hub=hub, worker=worker)
        self._wake = asyncio.Event()
        self._starved = False  # the last tick had no room for everything that was due
        self._reclaim_after: datetime | None = None
        self._next_ready: datetime | None = None  # as of the last tick
        self._generation: str | None = None
        self._sleeper: asyncio.Future[None] | None = None  # the sleep a wake cuts short
        self.on_refused: Callable[[str], None] | None = None  # a worker stops for good

    def wake(self) -> None:
        """Tick now: something earlier than the next known due time was scheduled."""
        self._wake.set()
        if self._sleeper is not None:
            self._sleeper.cancel()

    def slot_freed(self) -> None:
        """A run ended; tick now only if the last tick left due work for lack of room."""
        if self._starved:
            self.wake()

    async def tick(self) -> TickReport:
        """Claim what is due now, as much as the sink has room for, and submit it."""
        self._wake.clear()  # a wake from here on means: look again
        room = min(self.sink.room(), self.batch)
        self._starved = room <= 0
        if self._starved:
            return TickReport(full=True)
        now = self.clock.now()
        lease_until = now + self.lease
        reissued = await self._reissue(now, lease_until, room)
        # Claiming a few ms ahead lets one tick serve every occurrence in that window.
        polled = await self.store.poll(now + self.lookahead, room - len(reissued))
        self._check_generation(polled.generation)
        self.decider.unreadable(polled.unreadable)
        choices = [self.decider.choose(task, now) for task in polled.tasks]
        decisions = [choice.decision for choice in choices]
        results = await self.store.claim(decisions, lease_until=lease_until)
        report, rows = self.reporter.report(choices, results)
        self._starved = len(reissued) + len(polled.tasks) >= room
        self._next_ready = min(
            (t for t in (polled.next_ready_at, *(d.next_ready_at for d in decisions)) if t),
            default=None,
        )
        await self._record(rows)  # before the runs, which end later
        await self.sink.submit([*reissued, *_assignments(choices, results, polled.tasks)])
        return replace(report, reissued=len(reissued), full=self._starved)

    async def _record(self, rows: list[RunRecord]) -> None:
        """History rows of occurrences that did not run; losing them loses no run."""
        if rows and isinstance(self.store, OperationsStore):
            try:
                await self.store.record(rows)
            except StoreError as exc:
                logger.warning("dispatcher: %d history row(s) not recorded (%s)", len(rows), exc)

    async def _reissue(self, now: datetime, lease_until: datetime, room: int) -> list[Assignment]:
        # Leases are seconds long: looking for expired ones once a second is enough, and
        # spares a round trip on every tick of a busy dispatcher.
        last = self._reclaim_after
        if last is not None and last - _RECLAIM_EVERY <= now < last:  # (a clock moved back
            return []  # looks again at once)
        self._reclaim_after = now + _RECLAIM_EVERY
        expired = await self.store.reclaim_expired(now=now, lease_until=lease_until, limit=room)
        assignments, ended, names = [], [], []
        for claimed in expired:
            run = claimed.run
            try:
                descriptor = self.codec.decode(claimed.descriptor_json)
            except InvalidDescriptorError as exc:
                ended.append(Finish(run, Outcome.PARKED, f"stored descriptor is invalid: {exc}"))
                names.append("")
                continue
            if run.attempt > MAX_LOST_ATTEMPTS:
                ended.append(self.reporter.lost(run, MAX_LOST_ATTEMPTS))
                names.append(descriptor.name)
                continue
            if run.extra and run.attempt == 1:  # its turn came (trigger_task, backfill)
                logger.info("task %r: extra run of %s", run.task_id, run.occurrence_at.isoformat())
            else:
                logger.warning(
                    "task %r: the run of %s was given back or lost by its worker; re-running it "
                    "(attempt %d)",
                    run.task_id,
                    run.occurrence_at.isoformat(),
                    run.attempt,
                )
            assignments.append(Assignment(run, descriptor, claimed.trace_context))
        recorded = await self.store.finish(ended)
        for finish, name, ok in zip(ended, names, recorded, strict=True):
            if ok:
                self.reporter.ended(finish, name)
        return assignments

    def _check_generation(self, generation: str) -> None:
        if self._generation is not None and generation != self._generation:
            logger.error(
                "the schedule store lost its data (was Redis restarted without persistence?): "
                "every task scheduled before is gone; re-declare them (schedule_task is "
                "idempotent), and give Redis AOF persistence to keep them"
            )
            _telemetry.record_store_reset()
        self._generation = generation

    async def run(self, stopping: asyncio.Event) -> None:
        """Tick until ``stopping`` is set, sleeping until the next due time in between.

        Store failures are logged and retried with backoff; only refused credentials (with
        ``on_refused`` set) end the loop.
        """
        watch = asyncio.ensure_future(stopping.wait())  # one waiter for the loop's life
        watch.add_done_callback(lambda _: self.wake())
        try:
            await self._loop(stopping)
        finally:
            watch.cancel()

    async def _loop(self, stopping: asyncio.Event) -> None:
        backoff = 0.1
        while not stopping.is_set():
            try:
                report = await self.tick()
                backoff = 0.1
                if report.full and self.sink.room() > 0:
                    continue
                # Full sink: a run ending wakes us. Otherwise: sleep until the next due time.
                delay = self.poll_interval.total_seconds() if report.full else self._delay()
            except (StoreError, OSError, ConnectionError) as exc:
                if isinstance(exc, StoreAccessError) and self.on_refused is not None:
                    self.on_refused(str(exc))  # not transient: retrying cannot help
                    return
                logger.warning("dispatcher: store failed (%s); retrying in %.1f s", exc, backoff)
                delay, backoff = backoff, min(backoff * 2, 5.0)
            except Exception:
                # Whatever the store holds (even data tampered with), dispatching goes on.
                logger.exception("dispatcher: tick failed; retrying in %.1f s", backoff)
                delay, backoff = backoff, min(backoff * 2, 5.0)
            await self._sleep(delay, stopping)

    def _delay(self) -> float:
        # The last tick learnt when the next task is ready; a task scheduled since then
        # in this process wakes us, one scheduled elsewhere is seen within poll_interval.
        # Waking a quarter of the lookahead early claims that task before it is due: the
        # tick's round trips do not make it late.
        longest = self.poll_interval.total_seconds()
        if self._next_ready is None:
            return longest
        wait = (self._next_ready - self.clock.now() - self.lookahead / 4).total_seconds()
        return min(max(wait, 0.0), longest)

    async def _sleep(self, seconds: float, stopping: asyncio.Event) -> None:
        if self._wake.is_set() or stopping.is_set():
            return
        # One future per sleep: ``wake`` (and ``stopping``, through it) cancels it.
        self._sleeper = sleeper = asyncio.ensure_future(self.clock.sleep(seconds))
        try:
            await asyncio.wait([sleeper])
        finally:
            self._sleeper = None
            sleeper.cancel()


def _assignments(
    choices: Sequence[Choice], results: Sequence[ClaimResult], due: Sequence[DueTask]
) -> list[Assignment]:
    """The claimed runs, each with its descriptor and its task's trace context."""
    return [
        Assignment(result.run, choice.descriptor, task.trace_context)
        for choice, result, task in zip(choices, results, due, strict=True)
        if result.run is not None and choice.descriptor is not None
    ]
