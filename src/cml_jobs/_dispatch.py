"""Dispatch: claim due occurrences from the store and hand them to a transport.

Every worker runs a dispatcher; any number may run at once. Each tick reads the due
tasks, decides in Python what each one does (``plan``: misfire grace, coalescing), and
applies all decisions in one atomic store call that only succeeds for tasks still in the
state the decision was made from. So each occurrence becomes a run once, whoever wins.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Protocol

from cml_jobs import _telemetry
from cml_jobs._descriptors import TaskDescriptor, parse_descriptor
from cml_jobs._events import EventHub, EventKind, TaskEvent
from cml_jobs._timing import Clock
from cml_jobs._triggers import jitter_offset, plan
from cml_jobs.exceptions import InvalidDescriptorError, StoreError
from cml_jobs.stores._base import ClaimStatus, Decision, DueTask, Outcome, Run, ScheduleStore

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

    async def submit(self, runs: Sequence[Run], descriptors: Mapping[str, TaskDescriptor]) -> None:
        """Hand over ``runs``; ``descriptors`` maps task ids to the descriptors claimed
        (a re-issued run has none)."""
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
        clock: the time.
        sink: where runs go.
        hub: where lifecycle events go.
        lease: how long a claimed run may go without a heartbeat before it is re-issued.
        batch: the most tasks claimed per tick.
        poll_interval: the longest sleep between ticks (new tasks scheduled elsewhere are
            seen within it).
        lookahead: claim occurrences due up to this much ahead of now; the sink must start
            each run at its own time.
    """

    def __init__(
        self,
        *,
        store: ScheduleStore,
        clock: Clock,
        sink: RunSink,
        hub: EventHub,
        lease: timedelta = timedelta(seconds=30),
        batch: int = 500,
        poll_interval: timedelta = timedelta(seconds=1),
        lookahead: timedelta = timedelta(0),
    ) -> None:
        self.store = store
        self.clock = clock
        self.sink = sink
        self.hub = hub
        self.lease = lease
        self.batch = batch
        self.poll_interval = poll_interval
        self.lookahead = lookahead
        self._wake = asyncio.Event()
        self._parsed = _DescriptorCache()
        self._starved = False  # the last tick had no room for everything that was due
        self._reclaim_after: datetime | None = None
        self._next_ready: datetime | None = None  # as of the last tick
        self._generation: str | None = None

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
        # Claiming a few ms ahead lets one tick serve every occurrence in that window;
        # each run then waits for its own time (Executor.execute_claimed).
        polled = await self.store.poll(now + self.lookahead, room - len(reissued))
        due = polled.tasks
        decisions, descriptors, parked = await self._decide(due, now)
        results = await self.store.claim(decisions, now=now, lease_until=lease_until)
        runs = _traced([r.run for r in results if r.run is not None], due)
        missed, skipped = self._report(decisions, results, descriptors, now)
        self._starved = len(reissued) + len(due) >= room
        self._next_ready = _earliest(polled.next_ready_at, *(d.next_ready_at for d in decisions))
        await self.sink.submit([*reissued, *runs], descriptors)
        return TickReport(
            claimed=len(runs),
            reissued=len(reissued),
            missed=missed,
            skipped=skipped,
            parked=parked,
            full=len(reissued) + len(due) >= room,
        )

    async def _reissue(self, now: datetime, lease_until: datetime, room: int) -> list[Run]:
        # Leases are seconds long: looking for expired ones once a second is enough, and
        # spares a round trip on every tick of a busy dispatcher.
        last = self._reclaim_after
        if last is not None and last - _RECLAIM_EVERY <= now < last:  # (a clock moved back
            return []  # looks again at once)
        self._reclaim_after = now + _RECLAIM_EVERY
        await self._check_generation()
        expired = await self.store.reclaim_expired(now=now, lease_until=lease_until, limit=room)
        runs = []
        for run in expired:
            if run.attempt > MAX_LOST_ATTEMPTS:
                error = f"worker lost during {MAX_LOST_ATTEMPTS} attempts; not re-run"
                await self.store.finish(run, Outcome.FAILED, now=now, error=error)
                logger.error("task %r: %s", run.task_id, error)
                continue
            logger.warning(
                "task %r: the run of %s lost its worker; re-running it (attempt %d)",
                run.task_id,
                run.occurrence_at.isoformat(),
                run.attempt,
            )
            runs.append(run)
        return runs

    async def _check_generation(self) -> None:
        generation = await self.store.generation()
        if self._generation is not None and generation != self._generation:
            logger.error(
                "the schedule store lost its data (was Redis restarted without persistence?): "
                "every task scheduled before is gone; re-declare them (schedule_task is "
                "idempotent), and give Redis AOF persistence to keep them"
            )
            _telemetry.record_store_reset()
        self._generation = generation

    async def _decide(
        self, due: Sequence[DueTask], now: datetime
    ) -> tuple[list[Decision], dict[str, TaskDescriptor], int]:
        decisions: list[Decision] = []
        descriptors: dict[str, TaskDescriptor] = {}
        parked = 0
        for task in due:
            try:
                descriptor = self._parsed.parse(task.descriptor_json)
            except InvalidDescriptorError as exc:
                await self._park(task.task_id, f"stored descriptor is invalid: {exc}", now)
                parked += 1
                continue
            descriptors[task.task_id] = descriptor
            decisions.append(_decision(descriptor, task, now))
        return decisions, descriptors, parked

    async def _park(self, task_id: str, reason: str, now: datetime) -> None:
        await self.store.park(task_id, reason)
        logger.error("task %r parked: %s", task_id, reason)
        _telemetry.record_outcome("unknown", Outcome.PARKED)
        self.hub.emit(TaskEvent(EventKind.PARKED, task_id, "", now, error=reason))

    def _report(
        self,
        decisions: Sequence[Decision],
        results: Sequence[object],
        descriptors: Mapping[str, TaskDescriptor],
        now: datetime,
    ) -> tuple[int, int]:
        missed = skipped = 0
        for decision, result in zip(decisions, results, strict=True):
            status = getattr(result, "status", None)
            if status in (ClaimStatus.RACED, ClaimStatus.GONE):
                continue
            name = descriptors[decision.task_id].name
            if decision.missed:
                missed += decision.missed
                logger.warning(
                    "task %r: %d occurrence(s) missed (later than misfire_grace_time), "
                    "the first due at %s",
                    decision.task_id,
                    decision.missed,
                    decision.expected_due_at.isoformat(),
                )
                self._emit_count(EventKind.MISSED, decision, name, now, decision.missed)
            if status is ClaimStatus.SKIPPED:
                skipped += 1
                self._emit_count(EventKind.SKIPPED, decision, name, now, 1)
        return missed, skipped

    def _emit_count(
        self, kind: EventKind, decision: Decision, name: str, now: datetime, count: int
    ) -> None:
        _telemetry.record_outcome(name, Outcome(kind.value), count=count)
        self.hub.emit(
            TaskEvent(kind, decision.task_id, name, now, decision.expected_due_at, count=count)
        )

    async def run(self, stopping: asyncio.Event) -> None:
        """Tick until ``stopping`` is set, sleeping until the next due time in between.

        Store failures are logged and retried with backoff; they never end the loop.
        """
        backoff = 0.1
        while not stopping.is_set():
            try:
                report = await self.tick()
                backoff = 0.1
                if report.full and self.sink.room() > 0:
                    continue
                # Full sink: a run ending wakes us. Otherwise: sleep until the next due time.
                delay = self.poll_interval.total_seconds() if report.full else await self._delay()
            except (StoreError, OSError, ConnectionError) as exc:
                logger.warning(
                    "dispatcher: store unavailable (%s); retrying in %.1f s", exc, backoff
                )
                delay, backoff = backoff, min(backoff * 2, 5.0)
            except Exception:
                # Whatever the store holds (even data tampered with), dispatching goes on.
                logger.exception("dispatcher: tick failed; retrying in %.1f s", backoff)
                delay, backoff = backoff, min(backoff * 2, 5.0)
            await self._sleep(delay, stopping)

    async def _delay(self) -> float:
        # The last tick learnt when the next task is ready; a task scheduled since then
        # in this process wakes us, one scheduled elsewhere is seen within poll_interval.
        ready_at = self._next_ready
        longest = self.poll_interval.total_seconds()
        if ready_at is None:
            return longest
        # Wake for the next task itself (not lookahead early): the tick then claims it
        # with everything ready within the lookahead after it.
        wait = (ready_at - self.clock.now()).total_seconds()
        return min(max(wait, 0.0), longest)

    async def _sleep(self, seconds: float, stopping: asyncio.Event) -> None:
        if self._wake.is_set():
            return
        waits = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stopping.wait())]
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                waiter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await waiter


def _earliest(*times: datetime | None) -> datetime | None:
    return min((t for t in times if t is not None), default=None)


class _DescriptorCache:
    """Parsed descriptors by their JSON text: a recurrent task is parsed once, not on
    every occurrence (the text is the key, so a replaced task is parsed anew)."""

    def __init__(self, size: int = 100_000) -> None:
        self._size = size
        self._parsed: dict[str, TaskDescriptor] = {}

    def parse(self, raw: str) -> TaskDescriptor:
        descriptor = self._parsed.get(raw)
        if descriptor is None:
            descriptor = parse_descriptor(raw)
            if len(self._parsed) >= self._size:
                self._parsed.clear()
            self._parsed[raw] = descriptor
        return descriptor


def _traced(runs: list[Run], due: Sequence[DueTask]) -> list[Run]:
    """The runs with their task's trace context, so that each run's span links to it."""
    traces = {task.task_id: task.trace_context for task in due if task.trace_context}
    if not traces:
        return runs
    return [replace(run, trace_context=traces.get(run.task_id)) for run in runs]


def _decision(descriptor: TaskDescriptor, task: DueTask, now: datetime) -> Decision:
    decided = plan(descriptor, task.due_at, now)
    next_ready = None
    if decided.next_due_at is not None:
        next_ready = decided.next_due_at + jitter_offset(descriptor, decided.next_due_at)
    return Decision(
        task_id=task.task_id,
        expected_due_at=task.due_at,
        run_at=decided.run_at,
        next_due_at=decided.next_due_at,
        next_ready_at=next_ready,
        max_instances=descriptor.max_instances,
        missed=decided.missed,
    )
