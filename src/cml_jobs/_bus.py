"""The bus: schedule, cancel, pause, resume and look at tasks."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace as replace_fields
from datetime import datetime
from typing import Any

from cml_jobs import _telemetry
from cml_jobs._bulk import BulkScheduleResult, BulkWriter
from cml_jobs._codec import DescriptorCodec
from cml_jobs._descriptors import MAX_DESCRIPTOR_BYTES, TaskDescriptor
from cml_jobs._events import EventHub, EventKind, TaskEvent
from cml_jobs._operations import Operations, _not_found
from cml_jobs._registry import JobRegistry
from cml_jobs._task_info import PLAIN, TaskInfo, count_by_state
from cml_jobs._timing import Clock
from cml_jobs._triggers import (
    describe_trigger,
    first_occurrence,
    next_occurrence,
    ready_at,
)
from cml_jobs.exceptions import (
    ConfigurationError,
    InvalidTriggerError,
    PayloadTooLargeError,
)
from cml_jobs.stores._base import NewTask, ScheduleStore, TransactionalStore

__all__ = ["BackgroundTasksBus", "TaskInfo"]


class BackgroundTasksBus(Operations):
    """Schedules tasks into the store, after checking them against the registry, and
    operates on them (history, workers, extra runs: see the methods from ``get_history``
    on).

    Args:
        store: where tasks live.
        registry: the known jobs; a descriptor must name one of them.
        codec: how descriptors are written to the store and read back.
        clock: the time.
        hub: where lifecycle events go.
        on_scheduled: called after a task is written, to wake the local dispatcher.
    """

    def __init__(
        self,
        *,
        store: ScheduleStore,
        registry: JobRegistry,
        clock: Clock,
        hub: EventHub,
        codec: DescriptorCodec | None = None,
        on_scheduled: Callable[[], None] | None = None,
    ) -> None:
        self._store = store
        self._registry = registry
        self._codec = codec or PLAIN
        self._clock = clock
        self._hub = hub
        self._on_scheduled = on_scheduled
        self._bulk = BulkWriter(
            store=store, hub=hub, clock=clock, prepare=self._prepare, on_scheduled=on_scheduled
        )

    async def schedule_task(
        self, descriptor: TaskDescriptor, *, replace: bool = False, connection: Any = None
    ) -> TaskInfo:
        """Validate ``descriptor`` and schedule it (again: a no-op). Nothing is written if
        it is refused.

        Args:
            descriptor: the task.
            replace: replace a different task that has the same id.
            connection: your asyncpg connection, a transaction open on it (PostgreSQL
                store): the task is scheduled if that transaction commits, never if it
                rolls back. The ``scheduled`` event is emitted before your commit.

        Returns:
            The task as stored.

        Raises:
            UnknownJobError: no job is registered under ``descriptor.name``.
            InvalidTaskDataError: ``data`` does not fit the job's constructor.
            InvalidTriggerError: the task would never run, or a one-time task is due
                further in the past than its ``misfire_grace_time``.
            PayloadTooLargeError: the descriptor exceeds ``MAX_DESCRIPTOR_BYTES``.
            TaskExistsError: a different task has this id and ``replace`` is False.
            ConfigurationError: ``connection`` is given to a store that cannot use it.
        """
        store = self._store if connection is None else _within(self._store, connection)
        task = self._prepare(descriptor, self._clock.now())
        due_at = task.due_at
        with _telemetry.schedule_span(descriptor.name, descriptor.id) as trace_context:
            task = replace_fields(task, trace_context=trace_context)
            added = await store.add(task, replace=replace)
        if not added:  # the same task was already there: show it as it is
            return await self._info(store, descriptor.id)
        self._scheduled(descriptor, due_at)
        # As the store keeps it (to the millisecond), without reading it back.
        next_run = due_at.replace(microsecond=due_at.microsecond // 1000 * 1000)
        return TaskInfo(descriptor.id, descriptor.name, descriptor, next_run)

    async def schedule_tasks(
        self,
        descriptors: Iterable[TaskDescriptor],
        *,
        replace: bool = False,
        batch_size: int = 1000,
    ) -> BulkScheduleResult:
        """Validate every descriptor, then schedule them ``batch_size`` per atomic store
        call; a batch that holds a refused descriptor writes nothing, the others are
        written. Tasks already scheduled with the same descriptor are left as they are.

        Args:
            descriptors: the tasks, each with its own id.
            replace: replace different tasks that have the same ids.
            batch_size: descriptors per store call.

        Returns:
            The ids scheduled and those already scheduled unchanged.

        Raises:
            TasksRefusedError: some were refused (invalid as for ``schedule_task``, an id
                given twice, or without ``replace`` an id held by a different task); its
                ``result`` names each with its error, and the valid ones held back.
        """
        return await self._bulk.schedule(list(descriptors), replace=replace, batch_size=batch_size)

    async def cancel_tasks(
        self, task_ids: Iterable[str], *, batch_size: int = 1000
    ) -> dict[str, int | None]:
        """Remove many tasks, ``batch_size`` per atomic store call (see ``cancel_task``).

        Returns:
            Per id, how many of its runs were under way; None for an id with no task.
        """
        return await self._bulk.cancel(list(task_ids), batch_size=batch_size)

    def _prepare(self, descriptor: TaskDescriptor, now: datetime) -> NewTask:
        """Check a descriptor and build the task the store adds (without trace context)."""
        self._registry.validate(descriptor)
        due_at = self._first_due(descriptor, now)
        encoded = self._encoded(descriptor)
        return NewTask(descriptor.id, encoded, due_at, ready_at(descriptor, due_at))

    def _encoded(self, descriptor: TaskDescriptor) -> str:
        encoded = self._codec.encode(descriptor)
        size = len(encoded.encode())
        if size > MAX_DESCRIPTOR_BYTES:
            raise PayloadTooLargeError(
                f"task {descriptor.id!r} is {size} bytes as JSON, over the limit of "
                f"{MAX_DESCRIPTOR_BYTES}; keep large data in your own storage and put its id "
                "in data"
            )
        return encoded

    def _scheduled(self, descriptor: TaskDescriptor, due_at: datetime) -> None:
        """Announce a task just written, and wake this process's dispatcher."""
        self._emit(EventKind.SCHEDULED, descriptor.id, descriptor.name, due_at)
        if self._on_scheduled is not None:
            self._on_scheduled()

    def _first_due(self, descriptor: TaskDescriptor, now: datetime) -> datetime:
        due_at = first_occurrence(descriptor, now)
        if due_at is None:
            raise InvalidTriggerError(
                f"task {descriptor.id!r} would never run: {describe_trigger(descriptor)} has no "
                "occurrence from now on before the calendar ends (year 9999); check its trigger"
            )
        grace = descriptor.misfire_grace_time
        late = now - due_at
        if grace is not None and late > grace and next_occurrence(descriptor, due_at) is None:
            # Its only occurrence left is already missed: nothing would ever run.
            which = "scheduled_at" if descriptor.kind == "scheduled" else "last occurrence"
            raise InvalidTriggerError(
                f"task {descriptor.id!r} would never run: its {which}, {due_at.isoformat()!r}, "
                f"is {late.total_seconds():.0f} s in the past, beyond misfire_grace_time "
                f"({grace.total_seconds():.0f} s); pick a future time"
            )
        return due_at

    async def cancel_task(self, task_id: str) -> int:
        """Remove a task: once this returns, no run of it starts.

        A run is under way from the moment a worker claims it (a few ms before its
        occurrence) until its outcome is recorded. Runs under way are stopped by their
        worker's heartbeat within a third of the lease, and their outcome is not
        recorded.

        Returns:
            How many of the task's runs were under way (0 when none was).

        Raises:
            TaskNotFoundError: no task has this id.
        """
        name = await self._job_name(task_id)
        started = await self._store.remove(task_id)
        if started is None:
            raise _not_found(task_id)
        self._emit(EventKind.CANCELLED, task_id, name, None)
        return started

    async def pause_task(self, task_id: str, *, note: str | None = None) -> None:
        """Stop a task from running until ``resume_task``; occurrences meanwhile are not run.

        Args:
            task_id: the task.
            note: why, for the other operators: shown as ``TaskInfo.note`` until the task
                is resumed (at most 1 KiB).

        Raises:
            TaskNotFoundError: no task has this id.
        """
        if note is not None and len(note.encode()) > 1024:
            raise ValueError(f"the note is {len(note.encode())} bytes; keep it under 1 KiB")
        if not await self._store.set_paused(task_id, paused=True, due_at=None, ready_at=None):
            raise _not_found(task_id)
        if note is not None:
            await self._ops().set_note(task_id, note)
        self._emit(EventKind.PAUSED, task_id, await self._job_name(task_id), None)

    async def resume_task(self, task_id: str) -> None:
        """Resume a paused task from its next occurrence after now; a task whose ``end_at``
        passed meanwhile ends.

        Raises:
            TaskNotFoundError: no task has this id.
        """
        state = await self._store.get(task_id)
        if state is None:
            raise _not_found(task_id)
        descriptor = self._codec.decode(state.descriptor_json)
        now = self._clock.now()
        due_at = self._resume_at(descriptor, state, now)
        if due_at is None and not state.running:  # its end_at passed meanwhile: it has ended
            await self._store.remove(task_id)
        ready = None if due_at is None else ready_at(descriptor, due_at)
        await self._store.set_paused(task_id, paused=False, due_at=due_at, ready_at=ready)
        if state.note is not None:
            await self._ops().set_note(task_id, None)
        self._emit(EventKind.RESUMED, task_id, descriptor.name, due_at)
        if self._on_scheduled is not None:
            self._on_scheduled()

    async def get_task(self, task_id: str) -> TaskInfo:
        """The task with this id.

        Raises:
            TaskNotFoundError: no task has this id.
        """
        return TaskInfo.from_state(await self._live(task_id), self._codec)

    async def _info(self, store: ScheduleStore, task_id: str) -> TaskInfo:
        state = await store.get(task_id)
        if state is None:
            raise _not_found(task_id)
        return TaskInfo.from_state(state, self._codec)

    async def list_tasks(self) -> list[TaskInfo]:
        """Every task, ordered by id, paused, parked and ended ones included (an ended task
        is listed until ``history_retention`` after it ended).

        Also refreshes the counts that the ``cml_jobs.tasks`` gauge reports.
        """
        now = self._clock.now()
        tasks = [
            TaskInfo.from_state(state, self._codec)
            for state in await self._store.list()
            if state.expires_at is None or state.expires_at > now
        ]
        _telemetry.set_task_counts(count_by_state(tasks))
        return tasks

    async def _job_name(self, task_id: str) -> str:
        """The task's job name, for its events ("" when it is gone or unreadable)."""
        state = await self._store.get(task_id)
        return "" if state is None else TaskInfo.from_state(state, self._codec).name

    def _emit(self, kind: EventKind, task_id: str, name: str, at: datetime | None) -> None:
        self._hub.emit(TaskEvent(kind, task_id, name, self._clock.now(), at))


def _within(store: ScheduleStore, connection: Any) -> ScheduleStore:
    if not isinstance(store, TransactionalStore):
        raise ConfigurationError(
            f"schedule_task(connection=...) writes in your own transaction, which "
            f"{type(store).__name__} cannot do; keep tasks in PostgreSQL "
            "(store_url='postgresql://...'), or leave connection out"
        )
    return store.within(connection)
