"""Execution, the one run path: a claimed run → its job built and configured → its body
under a timeout, with retries → its outcome recorded.

Nothing here knows about arq or a store's kind: the dispatcher hands claimed runs in
(``submit``), and so do the arq run function and ``cml_jobs.testing``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from cml_jobs import _telemetry
from cml_jobs._batching import Batcher
from cml_jobs._descriptors import TaskDescriptor
from cml_jobs._events import EventHub, EventKind, TaskEvent
from cml_jobs._jobs import BackgroundJob, RecurrentBackgroundJob, RunContext, StopRecurrence
from cml_jobs._registry import JobRegistry
from cml_jobs._reporting import RunReporter, summary
from cml_jobs._timing import Clock
from cml_jobs._triggers import lateness, misfired
from cml_jobs.stores._base import Finish, Outcome, Run, ScheduleStore

if TYPE_CHECKING:
    from cml_jobs._di import ServiceProvider

__all__ = ["Assignment", "Executor"]

logger = logging.getLogger("cml_jobs.runs")
_NO_TIME = timedelta(0)


@dataclass(frozen=True)
class Assignment:
    """A claimed run with its task's descriptor: all a worker needs to execute it.

    Attributes:
        run: the run, under its fence and lease.
        descriptor: the task's descriptor, decoded.
        trace_context: the task's ``trace_context``; the run's span links to it.
    """

    run: Run
    descriptor: TaskDescriptor
    trace_context: str | None = None


@dataclass(frozen=True)
class _Result:
    outcome: Outcome
    error: BaseException | None = None
    attempt: int = 1


class Executor:
    """Runs claimed occurrences, up to ``max_concurrency`` at once, and records how they end.

    Args:
        store: where outcomes are recorded and leases renewed.
        registry: the job classes this process knows.
        clock: the time; every wait goes through it.
        hub: where lifecycle events go.
        provider: the container handed to ``configure``, or None.
        lease: how long a run's lease lasts from each renewal.
        max_concurrency: runs executing at once.
        finish_window: outcomes recorded within this window share one store call.
        worker: this worker's id, in history rows and log lines.
    """

    def __init__(
        self,
        *,
        store: ScheduleStore,
        registry: JobRegistry,
        clock: Clock,
        hub: EventHub,
        provider: ServiceProvider | None = None,
        lease: timedelta = timedelta(seconds=6),
        max_concurrency: int = 10,
        finish_window: timedelta = timedelta(0),
        worker: str = "",
    ) -> None:
        self.store = store
        self.registry = registry
        self.clock = clock
        self.hub = hub
        self.provider = provider
        self.lease = lease
        self.max_concurrency = max_concurrency
        self.worker = worker
        self.on_slot_free: Callable[[], None] | None = None
        self._reporter = RunReporter(registry=registry, clock=clock, hub=hub, worker=worker)
        self._active: dict[int, tuple[Run, asyncio.Task[Any]]] = {}  # leases to renew
        self._revoked: set[int] = set()  # fences of runs stopped because their task went
        self._busy: set[int] = set()  # fences of runs whose job has not ended
        self._tasks: set[asyncio.Task[None]] = set()
        self._finishes = Batcher(store.finish, finish_window)

    def room(self) -> int:
        """How many more runs this process may start now (``max_concurrency`` in all)."""
        return max(self.max_concurrency - len(self._busy), 0)

    async def submit(self, assignments: Sequence[Assignment]) -> None:
        """Start each run in a task of its own, in this process."""
        for assignment in assignments:
            task = asyncio.create_task(
                self.execute(assignment), name=f"cml-jobs-run-{assignment.run.task_id}"
            )
            self._tasks.add(task)
            self._busy.add(assignment.run.fence)
            task.add_done_callback(self._tasks.discard)

    async def drain(self, timeout: timedelta) -> None:
        """Wait up to ``timeout`` for the runs going on, then cancel the rest: each is
        given back to the store for another worker to re-run at once."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout.total_seconds())
        for task in self._tasks:
            task.cancel()
        if self._tasks:  # a cancelled run only gives its lease back: one store call
            await asyncio.wait(list(self._tasks), timeout=2)

    async def execute(self, assignment: Assignment) -> None:
        """Execute one claimed run at its time and record how it ended.

        Never raises for the job's failure: that is recorded. A run whose task is
        cancelled meanwhile is stopped (``revoke``) and records nothing.
        """
        run = assignment.run
        task = asyncio.current_task()
        assert task is not None
        self._active[run.fence] = (run, task)
        try:
            early = -lateness(assignment.descriptor, run.occurrence_at, self.clock.now())
            if not run.extra and early > _NO_TIME:  # claimed early: start at its time
                await self.clock.sleep(early.total_seconds())
            await self._run(assignment)
        except asyncio.CancelledError:
            if run.fence not in self._revoked:
                await asyncio.shield(self._give_back(assignment))
            raise
        finally:
            self._active.pop(run.fence, None)
            self._revoked.discard(run.fence)
            self._free_slot(run)

    async def _run(self, assignment: Assignment) -> None:
        run, descriptor = assignment.run, assignment.descriptor
        started_at = self.clock.now()
        late = lateness(descriptor, run.occurrence_at, started_at)
        _telemetry.record_lag(descriptor.name, late)
        if not run.extra and misfired(descriptor, run.occurrence_at, started_at):
            await self._finish(assignment, _Result(Outcome.MISSED, attempt=run.attempt), None)
            return
        result = await self._attempts(assignment)
        await self._finish(assignment, result, started_at)

    async def _attempts(self, assignment: Assignment) -> _Result:
        """Attempts of the job until one does not fail or the retries are used up."""
        run, descriptor = assignment.run, assignment.descriptor
        attempt = run.attempt
        while True:
            result = await self._attempt(assignment, attempt)
            retried = attempt - run.attempt
            if result.outcome is not Outcome.FAILED or retried >= descriptor.max_retries:
                return result
            self._reporter.emit(
                EventKind.RETRIED, run, descriptor.name, attempt=attempt, error=result.error
            )
            _telemetry.record_retry(descriptor.name, type(result.error).__qualname__)
            await self.clock.sleep((descriptor.retry_backoff * 2**retried).total_seconds())
            attempt += 1

    async def _attempt(self, assignment: Assignment, attempt: int) -> _Result:
        run, descriptor = assignment.run, assignment.descriptor
        name = descriptor.name
        with _telemetry.run_span(name, run.task_id, attempt, assignment.trace_context) as span:
            try:
                job = await self._build(assignment, attempt)
                if attempt == run.attempt:
                    self._reporter.emit(
                        EventKind.STARTED, run, name, data=self._reporter.data(descriptor)
                    )
                body = job.run_every if isinstance(job, RecurrentBackgroundJob) else job.run_at  # type: ignore[attr-defined]
                if descriptor.timeout is None:
                    await body()
                else:
                    await asyncio.wait_for(body(), descriptor.timeout.total_seconds())
                return _Result(Outcome.SUCCEEDED, attempt=attempt)
            except StopRecurrence as stop:
                return _Result(Outcome.STOPPED, stop, attempt)
            except asyncio.CancelledError:
                if run.fence in self._revoked:
                    span.set_attribute("cml_jobs.run.cancelled", True)
                raise
            except asyncio.TimeoutError as exc:
                _telemetry.mark_failed(span, exc)
                return _Result(Outcome.TIMED_OUT, exc, attempt)
            except Exception as exc:
                _telemetry.mark_failed(span, exc)
                return _Result(Outcome.FAILED, exc, attempt)
            finally:
                await self._close_run_resources()

    async def _build(self, assignment: Assignment, attempt: int) -> BackgroundJob:
        run, descriptor = assignment.run, assignment.descriptor
        job = self.registry.get(descriptor.name)(**descriptor.data)
        job.context = RunContext(run.task_id, descriptor.name, run.occurrence_at, attempt)
        configured = job.configure(service_provider=self.provider)
        if inspect.isawaitable(configured):
            await configured
        return job

    async def _close_run_resources(self) -> None:
        if self.provider is not None:
            from cml_jobs._di import close_run_resources

            await close_run_resources(self.provider.container)

    async def _finish(
        self, assignment: Assignment, result: _Result, started_at: datetime | None
    ) -> None:
        run, descriptor = assignment.run, assignment.descriptor
        # The job is done: its slot is free, and the heartbeat stops renewing its lease.
        self._active.pop(run.fence, None)
        self._free_slot(run)
        stopped = result.outcome is Outcome.STOPPED
        outcome, error_raised = result.outcome, result.error
        row = self._reporter.row(run, descriptor, outcome, error_raised, started_at, result.attempt)
        error = None if stopped else row.error_message or summary(error_raised)
        finish = Finish(run, outcome, error, stopped, started_at, row)
        if await self._finishes.submit(finish):  # else a late outcome: no event, no count
            self._reporter.outcome(run, descriptor, row, error_raised)
            return
        logger.info(
            "outcome of task %r (fence %d) not recorded: the task was cancelled or "
            "its run re-issued meanwhile",
            run.task_id,
            run.fence,
        )

    async def _give_back(self, assignment: Assignment) -> None:
        """This worker is stopping mid-run: let another worker re-run the occurrence now
        rather than after the lease."""
        run = assignment.run
        await self.store.extend([run], lease_until=self.clock.now(), release=True)
        logger.warning("run of task %r interrupted; released for a re-run", run.task_id)
        self._reporter.emit(EventKind.INTERRUPTED, run, assignment.descriptor.name)

    def _free_slot(self, run: Run) -> None:
        # A slot is free as soon as the job ends: recording its outcome need not hold up
        # the next run.
        if run.fence in self._busy:
            self._busy.discard(run.fence)
            if self.on_slot_free is not None:
                self.on_slot_free()

    # -- leases ------------------------------------------------------------------------

    def leased_runs(self) -> list[Run]:
        """The runs whose leases the heartbeat renews. Safe to call from another thread."""
        while True:
            try:
                return [run for run, _ in list(self._active.values())]
            except RuntimeError:  # the dict changed size while it was copied: copy again
                continue

    def on_event(self, event: TaskEvent) -> None:
        """Stop this process's runs of a task cancelled in this process at once, rather
        than at the next lease renewal (subscribe it to the process's hub)."""
        if event.kind is EventKind.CANCELLED:
            for run in self.leased_runs():
                if run.task_id == event.task_id:
                    self.revoke(run)

    def revoke(self, run: Run) -> None:
        """Stop a run whose fence is no longer valid (its task was cancelled or parked)."""
        entry = self._active.get(run.fence)
        if entry is not None and not entry[1].done():
            logger.warning("task %r was cancelled during its run; stopping it", run.task_id)
            self._revoked.add(run.fence)
            entry[1].cancel()

    async def renew(
        self, store: ScheduleStore, on_revoked: Callable[[Run], None] | None = None
    ) -> None:
        """Renew the leases of every run executing here through ``store``, and revoke the
        runs no longer valid (``on_revoked`` hands them to the loop from a thread)."""
        runs = self.leased_runs()
        if not runs:
            return
        valid = await store.extend(runs, lease_until=self.clock.now() + self.lease)
        for run, ok in zip(runs, valid, strict=True):
            if not ok:
                (on_revoked or self.revoke)(run)
