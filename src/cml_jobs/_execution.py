"""Execution: descriptor → job instance → DI → run (timeout, retries) → outcome recorded.

Nothing here knows about arq: the worker hands a ``Run`` in, the in-process test runner
does the same.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from cml_jobs import _telemetry
from cml_jobs._batching import Batcher
from cml_jobs._descriptors import TaskDescriptor, parse_descriptor
from cml_jobs._events import EventHub, EventKind, TaskEvent, redact
from cml_jobs._jobs import BackgroundJob, RecurrentBackgroundJob, RunContext, StopRecurrence
from cml_jobs._registry import JobRegistry, check_data
from cml_jobs._reporting import log_outcome, summary
from cml_jobs._timing import Clock
from cml_jobs._triggers import jitter_offset
from cml_jobs.exceptions import InvalidDescriptorError, InvalidTaskDataError
from cml_jobs.stores._base import Finish, Outcome, Run, ScheduleStore

if TYPE_CHECKING:
    from cml_jobs._di import ServiceProvider

__all__ = ["Executor", "Handoff"]

logger = logging.getLogger("cml_jobs.runs")


class Handoff(enum.Enum):
    """What the transport should do with a run this worker did not finish."""

    DONE = "done"  # finished (or stale): nothing more to do
    ELSEWHERE = "elsewhere"  # this worker lacks the job class: let another worker take it


@dataclass
class _Attempt:
    outcome: Outcome
    error: BaseException | None = None


class Executor:
    """Runs occurrences handed out by the dispatcher, and records how they end.

    Args:
        store: where runs are confirmed and outcomes recorded.
        registry: the job classes this process knows.
        clock: the time.
        hub: where lifecycle events go.
        provider: the container handed to ``configure``, or None.
        lease: how long a run's lease lasts; the heartbeat renews it every third of it.
        unknown_job_grace: how long an occurrence whose job no worker knows waits before
            the task is parked (covers rolling deploys).
    """

    def __init__(
        self,
        *,
        store: ScheduleStore,
        registry: JobRegistry,
        clock: Clock,
        hub: EventHub,
        provider: ServiceProvider | None = None,
        lease: timedelta = timedelta(seconds=30),
        unknown_job_grace: timedelta = timedelta(minutes=5),
        max_concurrency: int = 10,
        finish_window: timedelta = timedelta(0),
    ) -> None:
        self.store = store
        self.registry = registry
        self.clock = clock
        self.hub = hub
        self.provider = provider
        self.lease = lease
        self.unknown_job_grace = unknown_job_grace
        self._active: dict[int, tuple[Run, asyncio.Task[Any]]] = {}
        self._revoked: set[int] = set()  # fences whose runs the heartbeat cancelled
        self.max_concurrency = max_concurrency
        self.on_slot_free: Callable[[], None] | None = None
        self._spawned: set[asyncio.Task[Any]] = set()
        self._busy: set[int] = set()  # fences of spawned runs whose job has not ended
        self._finishes = Batcher(store.finish_many, finish_window)
        # A run is confirmed just before its job's body is called, after ``configure``: a
        # cancel that lands before that wins, and one that lands after reports the run as
        # started (see ``ScheduleStore.remove``). Runs starting together share one call.
        self._starts = Batcher(store.confirm, timedelta(0))

    @property
    def active(self) -> int:
        """Runs executing now in this process."""
        return len(self._active)

    @property
    def free_slots(self) -> int:
        """How many more runs this process may start now (``max_concurrency`` in all)."""
        return max(self.max_concurrency - len(self._busy), 0)

    def spawn(self, run: Run, descriptor: TaskDescriptor | None) -> None:
        """Execute a run in a task of its own, in this process.

        With the ``descriptor`` the dispatcher just claimed it under, the run starts at
        once: its fence and lease are fresh. Without it (a re-issued run) the run is
        confirmed with the store first.
        """
        work = self.execute(run) if descriptor is None else self.execute_claimed(run, descriptor)
        task = asyncio.create_task(work, name=f"cml-jobs-run-{run.task_id}")
        self._spawned.add(task)
        self._busy.add(run.fence)
        task.add_done_callback(lambda done: self._spawn_done(done, run))

    def _spawn_done(self, task: asyncio.Task[Any], run: Run) -> None:
        self._spawned.discard(task)
        self._free_slot(run)  # a run that ended without reaching _finish (parked, handed on)
        if not task.cancelled() and task.exception() is not None:
            logger.error("run failed outside its job", exc_info=task.exception())

    def _free_slot(self, run: Run) -> None:
        # A slot is free as soon as the job ends: recording its outcome is batched
        # and need not hold up the next run.
        if run.fence in self._busy:
            self._busy.discard(run.fence)
            if self.on_slot_free is not None:
                self.on_slot_free()

    async def drain(self, timeout: timedelta) -> None:
        """Wait up to ``timeout`` for spawned runs, then cancel (and so release) the rest."""
        if self._spawned:
            await asyncio.wait(list(self._spawned), timeout=timeout.total_seconds())
        for task in list(self._spawned):
            task.cancel()
        if self._spawned:
            await asyncio.wait(list(self._spawned), timeout=5)

    async def execute_claimed(self, run: Run, descriptor: TaskDescriptor) -> Handoff:
        """Execute a run this process just claimed, with its already-parsed descriptor.

        A run claimed ahead of its time (the dispatcher's lookahead) waits for it here.
        """
        ready_at = run.occurrence_at + jitter_offset(descriptor, run.occurrence_at)
        early = (ready_at - self.clock.now()).total_seconds()
        if early > 0:
            await asyncio.sleep(early)
        if descriptor.name not in self.registry:
            return await self._unknown_job(run, descriptor.name)
        if await self._parked_for_data(run, descriptor):
            return Handoff.DONE
        await self._run_tracked(run, descriptor, self.clock.now())
        return Handoff.DONE

    async def _parked_for_data(self, run: Run, descriptor: TaskDescriptor) -> bool:
        try:
            check_data(self.registry.get(descriptor.name), descriptor.data)
        except InvalidTaskDataError as exc:
            await self._park(run, descriptor.name, f"data no longer fits the job: {exc}")
            return True
        return False

    async def execute(self, run: Run, job_name: str | None = None) -> Handoff:
        """Execute one run if its fence is still valid, and record its outcome.

        Never raises for a job's failure: that is recorded. ``job_name`` (carried by the
        transport) lets a worker without the class hand the run on without touching it.
        """
        if job_name is not None and job_name not in self.registry:
            return await self._unknown_job(run, job_name)
        now = self.clock.now()
        started = await self.store.start(run, now=now, lease_until=now + self.lease)
        if started is None:
            logger.info(
                "run of task %r (fence %d) is no longer valid; skipped", run.task_id, run.fence
            )
            return Handoff.DONE
        try:
            descriptor = parse_descriptor(started.descriptor_json)
        except InvalidDescriptorError as exc:
            await self._park(run, "", f"stored descriptor is invalid: {exc}")
            return Handoff.DONE
        if descriptor.name not in self.registry:
            return await self._unknown_job(run, descriptor.name)
        if await self._parked_for_data(run, descriptor):
            return Handoff.DONE
        await self._run_tracked(run, descriptor, now)
        return Handoff.DONE

    async def _run_tracked(self, run: Run, descriptor: TaskDescriptor, now: datetime) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._active[run.fence] = (run, task)
        try:
            await self._run(run, descriptor, now)
        except asyncio.CancelledError:
            if run.fence not in self._revoked:
                # The worker is stopping: give the run back so that another worker re-runs
                # it at once instead of waiting for the lease to expire.
                release = self.store.extend([run], lease_until=self.clock.now())
                await asyncio.shield(release)
                logger.warning("run of task %r interrupted; released for a re-run", run.task_id)
            raise
        finally:
            self._active.pop(run.fence, None)
            self._revoked.discard(run.fence)

    async def _run(self, run: Run, descriptor: TaskDescriptor, now: datetime) -> None:
        name = descriptor.name
        lateness = now - run.occurrence_at - jitter_offset(descriptor, run.occurrence_at)
        grace = descriptor.misfire_grace_time
        _telemetry.record_lag(name, lateness)
        if grace is not None and lateness > grace:
            await self._finish(run, descriptor, _Attempt(Outcome.MISSED), now, late_by=lateness)
            return
        attempt = run.attempt
        while True:
            result = await self._attempt(run, descriptor, attempt)
            if result is None:
                logger.info("run of task %r was cancelled before it started", run.task_id)
                return
            if (
                result.outcome is not Outcome.FAILED
                or attempt - run.attempt >= descriptor.max_retries
            ):
                break
            delay = descriptor.retry_backoff * 2 ** (attempt - run.attempt)
            self._emit(EventKind.RETRIED, run, name, attempt=attempt, error=result.error)
            _telemetry.record_retry(name, type(result.error).__qualname__)
            await asyncio.sleep(delay.total_seconds())
            attempt += 1
        await self._finish(run, descriptor, result, now, attempt=attempt)

    async def _attempt(self, run: Run, descriptor: TaskDescriptor, attempt: int) -> _Attempt | None:
        """One attempt of the job; None when the run was cancelled before its body."""
        with _telemetry.run_span(descriptor.name, run.task_id, attempt, run.trace_context) as span:
            try:
                job = await self._build(run, descriptor, attempt)
                if attempt == run.attempt and not await self._confirm_start(run, descriptor):
                    span.set_attribute("cml_jobs.run.cancelled", True)
                    return None
                body = job.run_every if isinstance(job, RecurrentBackgroundJob) else job.run_at  # type: ignore[attr-defined]
                timeout = descriptor.timeout.total_seconds() if descriptor.timeout else None
                await asyncio.wait_for(body(), timeout)
                return _Attempt(Outcome.SUCCEEDED)
            except StopRecurrence as stop:
                return _Attempt(Outcome.STOPPED, stop)
            except asyncio.TimeoutError as exc:
                _telemetry.mark_failed(span, exc)
                return _Attempt(Outcome.TIMED_OUT, exc)
            except Exception as exc:
                _telemetry.mark_failed(span, exc)
                return _Attempt(Outcome.FAILED, exc)
            finally:
                await self._close_run_resources()

    async def _confirm_start(self, run: Run, descriptor: TaskDescriptor) -> bool:
        """Mark the run started in the store, unless its task was cancelled meanwhile."""
        if not await self._starts.submit(run):
            return False
        self._emit(EventKind.STARTED, run, descriptor.name, data=self._data(descriptor))
        return True

    async def _build(self, run: Run, descriptor: TaskDescriptor, attempt: int) -> BackgroundJob:
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
        self,
        run: Run,
        descriptor: TaskDescriptor,
        result: _Attempt,
        started_at: datetime,
        *,
        attempt: int | None = None,
        late_by: timedelta | None = None,
    ) -> None:
        # The job is done: the heartbeat must stop renewing a lease the record releases.
        self._active.pop(run.fence, None)
        self._free_slot(run)
        now = self.clock.now()
        duration = None if late_by is not None else now - started_at
        error = summary(result.error) if result.outcome is not Outcome.STOPPED else None
        stopped = result.outcome is Outcome.STOPPED
        recorded = await self._finishes.submit(
            Finish(
                run,
                result.outcome,
                error,
                end_task=stopped,
                started_at=None if late_by is not None else started_at,
            )
        )
        _telemetry.record_outcome(
            descriptor.name,
            result.outcome,
            duration=duration,
            error_type=type(result.error).__qualname__ if error else None,
        )
        data = self._data(descriptor)
        log_outcome(
            run,
            descriptor.name,
            result.outcome,
            result.error,
            attempt=attempt or run.attempt,
            duration=duration,
            late_by=late_by,
            data=data,
        )
        if not recorded:
            logger.info(
                "outcome of task %r (fence %d) not recorded: the task was cancelled or its "
                "run re-issued meanwhile",
                run.task_id,
                run.fence,
            )
        kind = EventKind(result.outcome.value)
        self._emit(
            kind,
            run,
            descriptor.name,
            attempt=attempt,
            duration=duration,
            error=result.error,
            data=data,
        )

    def _data(self, descriptor: TaskDescriptor) -> dict[str, Any]:
        """The task's data as logs and events show it (see ``BackgroundJob.redact_data``)."""
        job = self.registry.get(descriptor.name)
        return redact(descriptor.data, getattr(job, "redact_data", False))

    async def _unknown_job(self, run: Run, job_name: str) -> Handoff:
        waited = self.clock.now() - run.occurrence_at
        if waited <= self.unknown_job_grace:
            logger.info(
                "job %r of task %r is not registered in this worker; handing the run on",
                job_name,
                run.task_id,
            )
            return Handoff.ELSEWHERE
        reason = (
            f"no worker has run job {job_name!r} for {waited.total_seconds():.0f} s; "
            "deploy a worker whose modules include it, then reschedule the task"
        )
        await self._park(run, job_name, reason)
        return Handoff.DONE

    async def _park(self, run: Run, job_name: str, reason: str) -> None:
        now = self.clock.now()
        await self.store.park(run.task_id, reason)
        logger.error("task %r parked: %s", run.task_id, reason)
        _telemetry.record_outcome(job_name or "unknown", Outcome.PARKED)
        self.hub.emit(
            TaskEvent(EventKind.PARKED, run.task_id, job_name, now, run.occurrence_at, error=reason)
        )

    def _emit(
        self,
        kind: EventKind,
        run: Run,
        job_name: str,
        *,
        attempt: int | None = None,
        duration: timedelta | None = None,
        error: BaseException | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        event = TaskEvent(
            kind,
            run.task_id,
            job_name,
            self.clock.now(),
            run.occurrence_at,
            attempt=attempt or run.attempt,
            duration=duration,
            error=summary(error),
            data=data,
        )
        self.hub.emit(event)

    def leased_runs(self) -> list[Run]:
        """The runs whose leases the heartbeat renews. Safe to call from another thread."""
        while True:
            try:
                return [run for run, _ in list(self._active.values())]
            except RuntimeError:  # the dict changed size while it was copied: copy again
                continue

    def revoke(self, run: Run) -> None:
        """Stop a run whose task was cancelled (its fence is no longer valid)."""
        entry = self._active.get(run.fence)
        if entry is not None and not entry[1].done():
            logger.warning("task %r was cancelled during its run; stopping it", run.task_id)
            self._revoked.add(run.fence)
            entry[1].cancel()

    async def heartbeat(
        self,
        store: ScheduleStore | None = None,
        on_revoked: Callable[[Run], None] | None = None,
    ) -> None:
        """Renew the leases of every run executing here; revoke runs no longer valid.

        Args:
            store: the store to renew through (a heartbeat thread has its own connection).
            on_revoked: how to revoke a run (a thread must hand it to the event loop).
        """
        runs = self.leased_runs()
        if not runs:
            return
        until = self.clock.now() + self.lease
        valid = await (store or self.store).extend(runs, lease_until=until)
        for run, ok in zip(runs, valid, strict=True):
            if not ok:
                (on_revoked or self.revoke)(run)
