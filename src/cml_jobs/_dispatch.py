"""Dispatch: claim due occurrences from the store and hand them to a sink as runs.

Every worker runs a dispatcher; any number may run at once. Each tick reads the due
tasks, decides in Python what each one does (see ``_decide``), and applies all decisions
in one atomic store call that only succeeds for tasks still in the state the decision
was made from. So each occurrence becomes a run once, whoever wins, and the claim
decides that the run starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Protocol

from cml_jobs import _telemetry
from cml_jobs._codec import DescriptorCodec
from cml_jobs._decide import Choice, Decider
from cml_jobs._descriptors import TaskDescriptor
from cml_jobs._events import EventHub, EventKind, TaskEvent
from cml_jobs._execution import Assignment
from cml_jobs._registry import JobRegistry
from cml_jobs._timing import Clock
from cml_jobs.exceptions import InvalidDescriptorError, StoreAccessError, StoreError
from cml_jobs.stores._base import (
    ClaimResult,
    ClaimStatus,
    Decision,
    DueTask,
    Finish,
    Outcome,
    ScheduleStore,
)

__all__ = ["Dispatcher", "RunSink", "TickReport"]

logger = logging.getLogger("cml_jobs.dispatch")

#: A run whose worker was lost this many times is recorded as failed instead of re-run:
#: a job that kills its worker must not take down every worker in turn.
MAX_LOST_ATTEMPTS = 3
_RECLAIM_EVERY = timedelta(seconds=1)
_UNCOUNTED = (ClaimStatus.RACED, ClaimStatus.GONE, ClaimStatus.PARKED)


class RunSink(Protocol):
    """Where claimed runs go: this worker's executor, the arq queue, or a test."""

    def room(self) -> int:
        """How many runs the sink takes now; the dispatcher claims no more than that."""
        ...

    async def submit(self, assignments: Sequence[Assignment]) -> None:
        """Hand over claimed runs."""
        ...


@dataclass(frozen=True)
class TickReport:
    """What one dispatcher tick did."""

    claimed: int = 0
    reissued: int = 0
    missed: int = 0
    skipped: int = 0
    parked: int = 0
    full: bool = False  # the batch limit was reached: more may be due right now


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
    ) -> None:
        self.store, self.clock, self.sink, self.hub = store, clock, sink, hub
        self.codec, self.lease, self.batch, self.lookahead = codec, lease, batch, lookahead
        self.decider = Decider(codec=codec, registry=registry, unknown_job_grace=unknown_job_grace)
        self.poll_interval = poll_interval
        self._wake = asyncio.Event()
        self._starved = False  # the last tick had no room for everything that was due
        self._reclaim_after: datetime | None = None
        self._next_ready: datetime | None = None  # as of the last tick
        self._generation: str | None = None
        self.on_refused: Callable[[str], None] | None = None  # a worker stops for good

    def wake(self) -> None:
        """Tick now: something earlier than the next known due time was scheduled."""
        self._wake.set()

    def slot_freed(self) -> None:
        """A run ended; tick now only if the last tick left due work for lack of room."""
        if self._starved:
            self._wake.set()

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
        report = self._report(choices, results)
        self._starved = len(reissued) + len(polled.tasks) >= room
        self._next_ready = min(
            (t for t in (polled.next_ready_at, *(d.next_ready_at for d in decisions)) if t),
            default=None,
        )
        await self.sink.submit([*reissued, *_assignments(choices, results, polled.tasks)])
        return replace(report, reissued=len(reissued), full=self._starved)

    async def _reissue(self, now: datetime, lease_until: datetime, room: int) -> list[Assignment]:
        # Leases are seconds long: looking for expired ones once a second is enough, and
        # spares a round trip on every tick of a busy dispatcher.
        last = self._reclaim_after
        if last is not None and last - _RECLAIM_EVERY <= now < last:  # (a clock moved back
            return []  # looks again at once)
        self._reclaim_after = now + _RECLAIM_EVERY
        expired = await self.store.reclaim_expired(now=now, lease_until=lease_until, limit=room)
        assignments, lost = [], []
        for claimed in expired:
            run = claimed.run
            if run.attempt > MAX_LOST_ATTEMPTS:
                error = f"worker lost during {MAX_LOST_ATTEMPTS} attempts; not re-run"
                lost.append(Finish(run, Outcome.FAILED, error))
                logger.error("task %r: %s", run.task_id, error)
                continue
            try:
                descriptor = self.codec.decode(claimed.descriptor_json)
            except InvalidDescriptorError as exc:
                lost.append(Finish(run, Outcome.PARKED, f"stored descriptor is invalid: {exc}"))
                continue
            logger.warning(
                "task %r: the run of %s lost its worker; re-running it (attempt %d)",
                run.task_id,
                run.occurrence_at.isoformat(),
                run.attempt,
            )
            assignments.append(Assignment(run, descriptor, claimed.trace_context))
        await self.store.finish(lost)
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

    def _report(self, choices: Sequence[Choice], results: Sequence[ClaimResult]) -> TickReport:
        """Log, count and announce what the claim did besides handing out runs."""
        claimed = missed = skipped = parked = 0
        for choice, result in zip(choices, results, strict=True):
            decision, descriptor = choice.decision, choice.descriptor
            if result.status is ClaimStatus.PARKED:
                parked += 1
                self._parked(decision, choice.job_name, result.reason)
            if descriptor is None or result.status in _UNCOUNTED:
                continue
            claimed += result.status is ClaimStatus.CLAIMED
            if decision.missed:
                missed += decision.missed
                logger.warning(
                    "task %r: %d occurrence(s) missed (later than misfire_grace_time), "
                    "the first due at %s",
                    decision.task_id,
                    decision.missed,
                    decision.expected_due_at.isoformat(),
                )
                self._count(EventKind.MISSED, Outcome.MISSED, decision, descriptor, decision.missed)
            if result.status is ClaimStatus.SKIPPED:
                skipped += 1
                self._count(EventKind.SKIPPED, Outcome.SKIPPED, decision, descriptor, 1)
        return TickReport(claimed=claimed, missed=missed, skipped=skipped, parked=parked)

    def _parked(self, decision: Decision, job_name: str, reason: str | None) -> None:
        reason = reason or decision.park_reason
        logger.error("task %r parked: %s", decision.task_id, reason)
        _telemetry.record_outcome(job_name or "unknown", Outcome.PARKED)
        at, due = self.clock.now(), decision.expected_due_at
        event = TaskEvent(EventKind.PARKED, decision.task_id, job_name, at, due, error=reason)
        self.hub.emit(event)

    def _count(
        self,
        kind: EventKind,
        outcome: Outcome,
        decision: Decision,
        descriptor: TaskDescriptor,
        count: int,
    ) -> None:
        _telemetry.record_outcome(descriptor.name, outcome, count=count)
        at, due = self.clock.now(), decision.expected_due_at
        self.hub.emit(TaskEvent(kind, decision.task_id, descriptor.name, at, due, count=count))

    async def run(self, stopping: asyncio.Event) -> None:
        """Tick until ``stopping`` is set, sleeping until the next due time in between;
        store failures are retried with backoff, and only refused credentials end it."""
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
        longest = self.poll_interval.total_seconds()
        if self._next_ready is None:
            return longest
        wait = (self._next_ready - self.clock.now()).total_seconds()
        return min(max(wait, 0.0), longest)

    async def _sleep(self, seconds: float, stopping: asyncio.Event) -> None:
        if self._wake.is_set():
            return
        waits = [
            asyncio.ensure_future(self.clock.sleep(seconds)),
            asyncio.ensure_future(self._wake.wait()),
            asyncio.ensure_future(stopping.wait()),
        ]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                waiter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await waiter


def _assignments(
    choices: Sequence[Choice], results: Sequence[ClaimResult], due: Sequence[DueTask]
) -> list[Assignment]:
    """The claimed runs, each with its descriptor and its task's trace context."""
    return [
        Assignment(result.run, choice.descriptor, task.trace_context)
        for choice, result, task in zip(choices, results, due, strict=True)
        if result.run is not None and choice.descriptor is not None
    ]
