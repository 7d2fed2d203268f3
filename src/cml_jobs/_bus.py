"""The bus: schedule, cancel, pause, resume and look at tasks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cml_jobs import _telemetry
from cml_jobs._codec import DescriptorCodec
from cml_jobs._descriptors import (
    MAX_DESCRIPTOR_BYTES,
    RecurrentTaskDescriptor,
    ScheduledTaskDescriptor,
    TaskDescriptor,
)
from cml_jobs._events import EventHub, EventKind, TaskEvent
from cml_jobs._registry import JobRegistry
from cml_jobs._timing import Clock
from cml_jobs._triggers import (
    describe_trigger,
    first_occurrence,
    grid_point_at_or_after,
    next_occurrence,
    ready_at,
)
from cml_jobs.exceptions import (
    InvalidDescriptorError,
    InvalidTriggerError,
    PayloadTooLargeError,
    TaskNotFoundError,
)
from cml_jobs.stores._base import NewTask, Outcome, ScheduleStore, TaskState

__all__ = ["BackgroundTasksBus", "TaskInfo"]


@dataclass(frozen=True)
class TaskInfo:
    """A scheduled task as ``list_tasks`` and ``get_task`` show it.

    Attributes:
        id: the task id.
        name: the job name ("" if the stored descriptor is unreadable).
        descriptor: the task's descriptor, or None if the stored one is invalid.
        next_run_time: the next occurrence, or None (paused, parked, or running its last).
        last_run_time: when the latest run started.
        last_outcome: how the latest occurrence ended.
        last_error: a summary of the latest failure.
        paused: paused with ``pause_task``.
        parked_reason: why the task was parked, or None.
        running: runs going on now.
        counts: occurrences per outcome.
    """

    id: str
    name: str
    descriptor: TaskDescriptor | None
    next_run_time: datetime | None
    last_run_time: datetime | None = None
    last_outcome: Outcome | None = None
    last_error: str | None = None
    paused: bool = False
    parked_reason: str | None = None
    running: int = 0
    counts: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_state(cls, state: TaskState, codec: DescriptorCodec | None = None) -> TaskInfo:
        """Build from the store's record, read with ``codec`` (plain JSON by default)."""
        try:
            descriptor: TaskDescriptor | None = (codec or _PLAIN).decode(state.descriptor_json)
        except InvalidDescriptorError:
            descriptor = None
        live = not state.paused and state.parked_reason is None
        return cls(
            id=state.task_id,
            name=descriptor.name if descriptor else "",
            descriptor=descriptor,
            next_run_time=state.due_at if live else None,
            last_run_time=state.last_run_at,
            last_outcome=state.last_outcome,
            last_error=state.last_error,
            paused=state.paused,
            parked_reason=state.parked_reason,
            running=state.running,
            counts=state.counts,
        )


class BackgroundTasksBus:
    """Schedules tasks into the store, after checking them against the registry.

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
        self._codec = codec or _PLAIN
        self._clock = clock
        self._hub = hub
        self._on_scheduled = on_scheduled

    async def schedule_task(self, descriptor: TaskDescriptor, *, replace: bool = False) -> TaskInfo:
        """Validate ``descriptor`` and schedule it. Nothing is written if it is refused.

        Scheduling the same descriptor again is a no-op.

        Args:
            descriptor: the task.
            replace: replace a different task that has the same id.

        Returns:
            The task as stored.

        Raises:
            UnknownJobError: no job is registered under ``descriptor.name``.
            InvalidTaskDataError: ``data`` does not fit the job's constructor.
            InvalidTriggerError: the task would never run, or a one-time task is due
                further in the past than its ``misfire_grace_time``.
            PayloadTooLargeError: the descriptor exceeds ``MAX_DESCRIPTOR_BYTES``.
            TaskExistsError: a different task has this id and ``replace`` is False.
        """
        self._registry.validate(descriptor)
        now = self._clock.now()
        due_at = self._first_due(descriptor, now)
        encoded = self._encoded(descriptor)
        with _telemetry.schedule_span(descriptor.name, descriptor.id) as trace_context:
            ready = ready_at(descriptor, due_at)
            task = NewTask(descriptor.id, encoded, due_at, ready, trace_context)
            added = await self._store.add(task, replace=replace)
        if not added:  # the same task was already there: show it as it is
            return await self.get_task(descriptor.id)
        self._scheduled(descriptor, due_at)
        # As the store keeps it (to the millisecond), without reading it back.
        next_run = due_at.replace(microsecond=due_at.microsecond // 1000 * 1000)
        return TaskInfo(descriptor.id, descriptor.name, descriptor, next_run)

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
        started = await self._store.remove(task_id)
        if started is None:
            raise _not_found(task_id)
        self._emit(EventKind.CANCELLED, task_id, "", None)
        return started

    async def pause_task(self, task_id: str) -> None:
        """Stop a task from running until ``resume_task``; occurrences meanwhile are not run.

        Raises:
            TaskNotFoundError: no task has this id.
        """
        if not await self._store.set_paused(task_id, paused=True, due_at=None, ready_at=None):
            raise _not_found(task_id)
        self._emit(EventKind.PAUSED, task_id, "", None)

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
        self._emit(EventKind.RESUMED, task_id, descriptor.name, due_at)
        if self._on_scheduled is not None:
            self._on_scheduled()

    @staticmethod
    def _resume_at(descriptor: TaskDescriptor, state: TaskState, now: datetime) -> datetime | None:
        if isinstance(descriptor, ScheduledTaskDescriptor):
            return state.due_at  # a one-time task keeps its time; grace decides if it runs
        if isinstance(descriptor, RecurrentTaskDescriptor) and state.due_at is not None:
            return grid_point_at_or_after(descriptor, state.due_at, now)
        if isinstance(descriptor, RecurrentTaskDescriptor) and descriptor.start_at is None:
            return first_occurrence(descriptor, now)
        return next_occurrence(descriptor, now - timedelta(microseconds=1))

    async def get_task(self, task_id: str) -> TaskInfo:
        """The task with this id.

        Raises:
            TaskNotFoundError: no task has this id.
        """
        state = await self._store.get(task_id)
        if state is None:
            raise _not_found(task_id)
        return TaskInfo.from_state(state, self._codec)

    async def list_tasks(self) -> list[TaskInfo]:
        """Every task, ordered by id, paused and parked ones included.

        Also refreshes the counts that the ``cml_jobs.tasks`` gauge reports.
        """
        tasks = [TaskInfo.from_state(state, self._codec) for state in await self._store.list()]
        _telemetry.set_task_counts(_count(tasks))
        return tasks

    def _emit(self, kind: EventKind, task_id: str, name: str, at: datetime | None) -> None:
        self._hub.emit(TaskEvent(kind, task_id, name, self._clock.now(), at))


_PLAIN = DescriptorCodec()


def _count(tasks: list[TaskInfo]) -> dict[str, int]:
    """Tasks per state, for the ``cml_jobs.tasks`` gauge: parked, else paused, else
    running, else scheduled (if it has a next occurrence)."""
    counts = dict.fromkeys(_telemetry.TASK_STATES, 0)
    for task in tasks:
        if task.parked_reason is not None:
            counts["parked"] += 1
        elif task.paused:
            counts["paused"] += 1
        elif task.running:
            counts["running"] += 1
        elif task.next_run_time is not None:
            counts["scheduled"] += 1
    return counts


def _not_found(task_id: str) -> TaskNotFoundError:
    return TaskNotFoundError(
        f"no task with id {task_id!r} is scheduled; list_tasks() shows the ones that are"
    )
