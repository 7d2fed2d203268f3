"""What an operator does to tasks besides scheduling them: look at their run history and
the workers, run a task now or over a past window, unpark, update, and preview a trigger.

``BackgroundTasksBus`` inherits these methods; they need a store that is also an
``OperationsStore`` (memory, Redis and PostgreSQL are).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, overload

from cml_jobs._codec import DescriptorCodec
from cml_jobs._descriptors import RecurrentTaskDescriptor, ScheduledTaskDescriptor, TaskDescriptor
from cml_jobs._events import EventHub, EventKind, TaskEvent
from cml_jobs._registry import JobRegistry
from cml_jobs._timing import Clock
from cml_jobs._triggers import (
    first_occurrence,
    grid_point_at_or_after,
    next_occurrence,
    occurrences_between,
    ready_at,
    upcoming,
)
from cml_jobs.exceptions import (
    ConfigurationError,
    InvalidDescriptorError,
    TaskNotFoundError,
    TaskParkedError,
    UnknownJobError,
)
from cml_jobs.stores._base import ScheduleStore, TaskState
from cml_jobs.stores._ops import OperationsStore, RunRecord, WorkerInfo

if TYPE_CHECKING:
    from cml_jobs._bus import TaskInfo

__all__ = ["MAX_BACKFILL", "Operations"]

#: The most occurrences one ``backfill`` call runs.
MAX_BACKFILL = 1000


class Operations:
    """The operations half of ``BackgroundTasksBus`` (see there for the constructor)."""

    _store: ScheduleStore
    _registry: JobRegistry
    _codec: DescriptorCodec
    _clock: Clock
    _hub: EventHub
    _on_scheduled: Callable[[], None] | None

    async def get_history(self, task_id: str, limit: int = 100) -> list[RunRecord]:
        """The task's latest runs, newest first: up to ``limit`` of the ``history_size``
        (100 by default) the store keeps. A task that ended keeps its history for
        ``history_retention`` (7 days by default).

        Raises:
            TaskNotFoundError: no task has this id, nor any history.
        """
        if limit < 1:
            raise ValueError(f"limit={limit!r}: expected a positive number of rows")
        state = await self._store.get(task_id)
        rows = await self._ops().history(task_id, limit)
        if state is None and rows:  # a one-time task missed at its claim ends at once
            return rows
        await self._live(task_id)
        return rows

    async def list_workers(self) -> list[WorkerInfo]:
        """The workers alive now (their latest heartbeat has not expired), ordered by id.

        A worker registers when it starts, refreshes itself with every heartbeat (a third
        of the lease), and removes itself when it stops cleanly; one that crashed drops
        out once its registration expires (one lease after its last heartbeat).
        """
        return await self._ops().workers(self._clock.now())

    async def trigger_task(self, task_id: str) -> datetime:
        """Run the task once more, now, outside its schedule (its schedule is unchanged).

        The run is an occurrence of its own, at the time of the call; any worker runs it,
        exactly once, as soon as fewer than ``max_instances`` runs of the task are going
        (see ``backfill`` for how extra runs share ``max_instances``). It is not subject
        to ``misfire_grace_time``. A paused task may be triggered.

        Returns:
            The extra run's occurrence time (it appears in ``get_history``).

        Raises:
            TaskNotFoundError: no task has this id, or it has ended.
            TaskParkedError: the task is parked; ``unpark_task`` it first.
        """
        state, descriptor = await self._runnable(task_id)
        now = _ms(self._clock.now())
        await self._add_runs(state, descriptor, [now])
        return now

    async def backfill(self, task_id: str, start: datetime, end: datetime) -> list[datetime]:
        """Run each occurrence of the task's trigger in the past window ``[start, end]``
        once, as extra runs (the job's ``context.occurrence_at`` is each one's time).

        Overlap rule: backfilled runs and scheduled occurrences share ``max_instances``.
        The extra runs are handed out oldest first, only while fewer than
        ``max_instances`` runs of the task are going, so with the default of 1 they run
        one after another; a scheduled occurrence that comes due while ``max_instances``
        runs are under way or waiting (extra ones included) is skipped, as usual. Each
        call runs every occurrence of its window, whether it ran before or not: the
        history tells which did.

        Returns:
            The occurrences queued, oldest first (none when the window holds none).

        Raises:
            ValueError: the window is not aware, is reversed, ends in the future, or
                holds more than ``MAX_BACKFILL`` occurrences.
            TaskNotFoundError: no task has this id, or it has ended.
            TaskParkedError: the task is parked; ``unpark_task`` it first.
        """
        now = self._clock.now()
        if start.tzinfo is None or end.tzinfo is None or not start <= end <= now:
            raise ValueError(
                f"backfill window {start.isoformat()!r}..{end.isoformat()!r}: expected aware "
                "datetimes with start <= end <= now"
            )
        state, descriptor = await self._runnable(task_id)
        anchor = state.due_at or state.last_run_at or end
        found = occurrences_between(descriptor, anchor, start, end, MAX_BACKFILL + 1)
        if len(found) > MAX_BACKFILL:
            raise ValueError(
                f"the window holds more than {MAX_BACKFILL} occurrences of task {task_id!r}; "
                "backfill it in smaller windows"
            )
        occurrences = [_ms(at) for at in found]
        if occurrences:
            await self._add_runs(state, descriptor, occurrences)
        return occurrences

    async def unpark_task(self, task_id: str) -> TaskInfo:
        """Take a parked task back into the schedule, from its next occurrence after now,
        once its stored descriptor passes the checks ``schedule_task`` makes against the
        jobs this process knows (deploy the fix, then unpark). A task not parked is left
        as it is.

        Raises:
            TaskNotFoundError: no task has this id.
            InvalidDescriptorError, UnknownJobError: the descriptor still cannot run; the
                message says why, and the task stays parked, unchanged.
        """
        state = await self._live(task_id)
        if state.parked_reason is None:
            return await self.get_task(task_id)
        descriptor = self._still_runnable(state)
        now = self._clock.now()
        due_at = self._resume_at(descriptor, state, now)
        ready = None if due_at is None else ready_at(descriptor, due_at)
        if not await self._ops().unpark(task_id, due_at=due_at, ready_at=ready):
            return await self.get_task(task_id)  # unparked meanwhile
        self._announce(EventKind.RESUMED, task_id, descriptor.name, due_at)
        return await self.get_task(task_id)

    def _still_runnable(self, state: TaskState) -> TaskDescriptor:
        task_id = state.task_id
        try:
            descriptor = self._codec.decode(state.descriptor_json)
            if descriptor.id != task_id:
                raise InvalidDescriptorError(
                    f"its descriptor has id {descriptor.id!r}; reschedule it from the app"
                )
            self._registry.validate(descriptor)
        except (InvalidDescriptorError, UnknownJobError) as exc:
            raise type(exc)(
                f"task {task_id!r} still cannot run, so it stays parked: {exc}"
            ) from exc
        return descriptor

    async def update_task(self, descriptor: TaskDescriptor) -> TaskInfo:
        """Change an existing task's trigger or options (``descriptor.id`` names it),
        keeping its history, counts, last outcome and note. Its next occurrence is
        computed from the new trigger, as ``schedule_task`` does; a paused or parked task
        stays so, and runs under way finish under the old descriptor.

        Raises:
            TaskNotFoundError: no task has this id, or it has ended.
            UnknownJobError, InvalidDescriptorError: as ``schedule_task``; nothing changes.
        """
        self._registry.validate(descriptor)
        await self._live(descriptor.id, ended_is_gone=True)
        now = self._clock.now()
        due_at = self._first_due(descriptor, now)
        encoded = self._encoded(descriptor)
        ready = ready_at(descriptor, due_at)
        if not await self._ops().update(descriptor.id, encoded, due_at=due_at, ready_at=ready):
            raise _not_found(descriptor.id)
        self._announce(EventKind.SCHEDULED, descriptor.id, descriptor.name, due_at)
        return await self.get_task(descriptor.id)

    @overload
    def upcoming(self, task: str, k: int = 5) -> Awaitable[list[datetime]]: ...

    @overload
    def upcoming(self, task: TaskDescriptor, k: int = 5) -> list[datetime]: ...

    def upcoming(
        self, task: str | TaskDescriptor, k: int = 5
    ) -> list[datetime] | Awaitable[list[datetime]]:
        """The next ``k`` occurrence times, by trigger arithmetic alone (jitter excluded).

        ``bus.upcoming(descriptor, k)`` answers at once, for a descriptor as if scheduled
        now; ``await bus.upcoming(task_id, k)`` reads the task's next due time from the
        store (none for a paused, parked or ended task).
        """
        if k < 0:
            raise ValueError(f"k={k!r}: expected a number of occurrences, 0 or more")
        if isinstance(task, str):
            return self._upcoming_of(task, k)
        return upcoming(task, first_occurrence(task, self._clock.now()), k)

    async def _upcoming_of(self, task_id: str, k: int) -> list[datetime]:
        state = await self._live(task_id)
        live = not state.paused and state.parked_reason is None and state.ended_at is None
        if not live or state.due_at is None:
            return []
        return upcoming(self._codec.decode(state.descriptor_json), state.due_at, k)

    # -- helpers ---------------------------------------------------------------------
    @staticmethod
    def _resume_at(descriptor: TaskDescriptor, state: TaskState, now: datetime) -> datetime | None:
        if isinstance(descriptor, ScheduledTaskDescriptor):
            return state.due_at  # a one-time task keeps its time; grace decides if it runs
        if isinstance(descriptor, RecurrentTaskDescriptor) and state.due_at is not None:
            return grid_point_at_or_after(descriptor, state.due_at, now)
        if isinstance(descriptor, RecurrentTaskDescriptor) and descriptor.start_at is None:
            return first_occurrence(descriptor, now)
        return next_occurrence(descriptor, now - timedelta(microseconds=1))

    def _ops(self) -> OperationsStore:
        if not isinstance(self._store, OperationsStore):
            raise ConfigurationError(
                f"the store {type(self._store).__name__} keeps no history or workers; use the "
                "memory, Redis or PostgreSQL store, or implement cml_jobs.stores.OperationsStore"
            )
        return self._store

    async def _live(self, task_id: str, *, ended_is_gone: bool = False) -> TaskState:
        """The task's state; an ended task counts as absent once it expired (or at once
        with ``ended_is_gone``)."""
        state = await self._store.get(task_id)
        if state is None or (state.ended_at is not None and ended_is_gone):
            raise _not_found(task_id)
        if state.expires_at is not None and state.expires_at <= self._clock.now():
            raise _not_found(task_id)
        return state

    async def _runnable(self, task_id: str) -> tuple[TaskState, TaskDescriptor]:
        state = await self._live(task_id, ended_is_gone=True)
        if state.parked_reason is not None:
            raise TaskParkedError(
                f"task {task_id!r} is parked ({state.parked_reason}); fix the cause, then "
                "unpark_task it"
            )
        return state, self._codec.decode(state.descriptor_json)

    async def _add_runs(
        self, state: TaskState, descriptor: TaskDescriptor, occurrences: list[datetime]
    ) -> None:
        ops, now = self._ops(), self._clock.now()
        if not await ops.add_runs(
            state.task_id, occurrences, max_instances=descriptor.max_instances, now=now
        ):  # cancelled, ended or parked since it was read
            await self._runnable(state.task_id)
            raise _not_found(state.task_id)
        if self._on_scheduled is not None:
            self._on_scheduled()

    def _announce(self, kind: EventKind, task_id: str, name: str, at: datetime | None) -> None:
        self._hub.emit(TaskEvent(kind, task_id, name, self._clock.now(), at))
        if self._on_scheduled is not None:
            self._on_scheduled()

    if TYPE_CHECKING:  # implemented by the bus

        async def get_task(self, task_id: str) -> TaskInfo: ...

        def _first_due(self, descriptor: TaskDescriptor, now: datetime) -> datetime: ...

        def _encoded(self, descriptor: TaskDescriptor) -> str: ...


def _ms(at: datetime) -> datetime:
    return at - timedelta(microseconds=at.microsecond % 1000)


def _not_found(task_id: str) -> TaskNotFoundError:
    return TaskNotFoundError(
        f"no task with id {task_id!r} is scheduled; list_tasks() shows the ones that are"
    )
