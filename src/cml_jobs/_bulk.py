"""Scheduling and cancelling many tasks per call (``BackgroundTasksBus.schedule_tasks`` and
``cancel_tasks``).

Every descriptor is checked before anything is written. Then each batch is written in
one store call (one atomic step when the store is a ``BulkScheduleStore``: in Redis, one
script call per batch); a batch that holds a refused descriptor writes nothing.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from cml_jobs import _telemetry
from cml_jobs._descriptors import TaskDescriptor
from cml_jobs._events import EventHub, EventKind, TaskEvent
from cml_jobs._timing import Clock
from cml_jobs.exceptions import (
    CmlJobsError,
    ConfigurationError,
    InvalidDescriptorError,
    TaskExistsError,
    TasksRefusedError,
)
from cml_jobs.stores._base import NewTask, ScheduleStore
from cml_jobs.stores._bulk import AddResult, BulkScheduleStore, task_exists

__all__ = ["BulkScheduleResult", "BulkWriter"]

#: Checks a descriptor and turns it into the task the store adds (without its trace
#: context); raises the error that refuses it.
Prepare = Callable[[TaskDescriptor, datetime], NewTask]

_SHOWN = 10  # refused descriptors named in the error message


@dataclass(frozen=True)
class BulkScheduleResult:
    """What ``schedule_tasks`` did with each descriptor, by task id.

    Attributes:
        scheduled: the tasks written, in the order given.
        unchanged: the tasks already scheduled with the same descriptor (nothing written).
        refused: each refused descriptor's id and the error that refused it.
        held_back: valid descriptors not written because their batch held a refused one.
    """

    scheduled: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    refused: dict[str, CmlJobsError] = field(default_factory=dict)
    held_back: list[str] = field(default_factory=list)


@dataclass
class _Batch:
    tasks: list[NewTask] = field(default_factory=list)
    names: list[str] = field(default_factory=list)  # each task's job name
    refused: dict[str, CmlJobsError] = field(default_factory=dict)
    ids: list[str] = field(default_factory=list)  # every id of the batch, in order


class BulkWriter:
    """Writes and removes tasks in batches for the bus.

    Args:
        store: where tasks live.
        hub: where the ``SCHEDULED`` and ``CANCELLED`` events go.
        clock: the time.
        prepare: checks one descriptor (as ``schedule_task`` does).
        on_scheduled: called after each batch is written, to wake the local dispatcher.
    """

    def __init__(
        self,
        *,
        store: ScheduleStore,
        hub: EventHub,
        clock: Clock,
        prepare: Prepare,
        on_scheduled: Callable[[], None] | None,
    ) -> None:
        self.store, self.hub, self.clock = store, hub, clock
        self.prepare, self.on_scheduled = prepare, on_scheduled

    async def schedule(
        self, descriptors: Sequence[TaskDescriptor], *, replace: bool, batch_size: int
    ) -> BulkScheduleResult:
        """Check every descriptor, then write the batches that hold no refused one."""
        _check_batch_size(batch_size)
        now, seen = self.clock.now(), set[str]()
        batches = [
            self._checked(descriptors[i : i + batch_size], now, seen)
            for i in range(0, len(descriptors), batch_size)
        ]
        result = BulkScheduleResult()
        # Two batches in flight: one is packed and sent while the store writes the one
        # before; their answers are recorded in order.
        flying: deque[asyncio.Future[tuple[list[NewTask], list[str], list[AddResult]]]] = deque()
        try:
            for batch in batches:
                if batch.refused:
                    result.refused.update(batch.refused)
                    result.held_back.extend(i for i in batch.ids if i not in batch.refused)
                    continue
                flying.append(asyncio.ensure_future(self._write(batch, replace)))
                if len(flying) > 1:
                    self._record(*await flying.popleft(), result)
            while flying:
                self._record(*await flying.popleft(), result)
        finally:
            for left in flying:
                left.cancel()
        if result.refused:
            raise TasksRefusedError(_refusal(result, len(descriptors)), result)
        return result

    def _checked(
        self, descriptors: Sequence[TaskDescriptor], now: datetime, seen: set[str]
    ) -> _Batch:
        batch = _Batch()
        for descriptor in descriptors:
            task_id = descriptor.id
            batch.ids.append(task_id)
            if task_id in seen:
                batch.refused[task_id] = InvalidDescriptorError(
                    f"task id {task_id!r} appears more than once in this call; give each "
                    "task its own id"
                )
                continue
            seen.add(task_id)
            try:
                batch.tasks.append(self.prepare(descriptor, now))
            except CmlJobsError as exc:
                batch.refused[task_id] = exc
                continue
            batch.names.append(descriptor.name)
        return batch

    async def _write(
        self, batch: _Batch, replace: bool
    ) -> tuple[list[NewTask], list[str], list[AddResult]]:
        with _telemetry.schedule_batch_span(len(batch.tasks)) as trace:
            tasks = [
                NewTask(t.task_id, t.descriptor_json, t.due_at, t.ready_at, trace)
                for t in batch.tasks
            ]
            return tasks, batch.names, await self._add(tasks, replace)

    def _record(
        self,
        tasks: list[NewTask],
        names: list[str],
        answers: list[AddResult],
        result: BulkScheduleResult,
    ) -> None:
        at = self.clock.now()
        for task, name, answer in zip(tasks, names, answers, strict=True):
            if answer is AddResult.WRITTEN:
                result.scheduled.append(task.task_id)
                self.hub.emit(TaskEvent(EventKind.SCHEDULED, task.task_id, name, at, task.due_at))
            elif answer is AddResult.UNCHANGED:
                result.unchanged.append(task.task_id)
            else:
                result.refused[task.task_id] = task_exists(task.task_id)
        if self.on_scheduled is not None and result.scheduled:
            self.on_scheduled()

    async def _add(self, tasks: list[NewTask], replace: bool) -> list[AddResult]:
        if isinstance(self.store, BulkScheduleStore):
            return await self.store.add_many(tasks, replace=replace)
        answers = []
        for task in tasks:  # a store without the bulk capability: one call per task
            try:
                added = await self.store.add(task, replace=replace)
            except TaskExistsError:
                answers.append(AddResult.CONFLICT)
                continue
            answers.append(AddResult.WRITTEN if added else AddResult.UNCHANGED)
        return answers

    async def cancel(self, task_ids: Sequence[str], *, batch_size: int) -> dict[str, int | None]:
        """Remove the tasks batch by batch; per id, its runs under way (None: no task)."""
        _check_batch_size(batch_size)
        removed: dict[str, int | None] = {}
        for i in range(0, len(task_ids), batch_size):
            chunk = task_ids[i : i + batch_size]
            if isinstance(self.store, BulkScheduleStore):
                counts = await self.store.remove_many(chunk)
            else:
                counts = [await self.store.remove(task_id) for task_id in chunk]
            at = self.clock.now()
            for task_id, count in zip(chunk, counts, strict=True):
                removed[task_id] = count
                if count is not None:
                    self.hub.emit(TaskEvent(EventKind.CANCELLED, task_id, "", at, None))
        return removed


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ConfigurationError(f"batch_size={batch_size!r} must be at least 1")


def _refusal(result: BulkScheduleResult, total: int) -> str:
    shown = "; ".join(
        f"{task_id!r}: {type(error).__name__}: {error}"
        for task_id, error in list(result.refused.items())[:_SHOWN]
    )
    more = len(result.refused) - _SHOWN
    if more > 0:
        shown += f"; and {more} more (see .result.refused)"
    return (
        f"{len(result.refused)} of {total} task descriptors were refused, and "
        f"{len(result.held_back)} valid ones in their batches were not written "
        f"(.result.held_back); {len(result.scheduled)} were scheduled. Refused: {shown}. "
        "Fix them and schedule the refused and held-back ones again (scheduling is "
        "idempotent)"
    )
