"""The in-memory store's task record, and its side of ``OperationsStore``: run history,
the worker registry, extra runs and operators' edits (see ``memory.py``)."""

from __future__ import annotations

import builtins
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

from cml_jobs.stores._ops import RunRecord, WorkerInfo, cut
from cml_jobs.stores._records import Outcome, Run

__all__ = ["MemoryOperations", "Task", "ms"]


def ms(at: datetime) -> datetime:
    """Truncate to the millisecond, as every store keeps time."""
    return at.astimezone(timezone.utc) - timedelta(microseconds=at.microsecond % 1000)


@dataclass
class Task:
    """One task, as the in-memory store keeps it."""

    descriptor_json: str
    due_at: datetime | None
    ready_at: datetime | None
    paused: bool = False
    parked_reason: str | None = None
    last_run_at: datetime | None = None
    last_outcome: Outcome | None = None
    last_error: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    runs: dict[int, Run] = field(default_factory=dict)
    trace_context: str | None = None
    note: str | None = None
    ended_at: datetime | None = None
    expires_at: datetime | None = None
    waiting: dict[int, int] = field(default_factory=dict)  # extra run's fence -> max_instances

    @property
    def schedulable(self) -> bool:
        return not self.paused and self.parked_reason is None and self.ready_at is not None

    def count(self, outcome: Outcome, n: int = 1) -> None:
        self.counts[outcome.value] = self.counts.get(outcome.value, 0) + n


class MemoryOperations:
    """``OperationsStore`` over the in-memory store's dicts (mixed into it)."""

    _tasks: dict[str, Task]
    _leases: dict[int, tuple[str, datetime]]
    _history: dict[str, deque[RunRecord]]
    _workers: dict[str, WorkerInfo]
    history_size: int
    history_retention: timedelta

    if TYPE_CHECKING:  # the store's

        def _new_run(
            self, task_id: str, occurrence_at: datetime, attempt: int, until: datetime, extra: bool
        ) -> Run: ...

    async def history(self, task_id: str, limit: int) -> builtins.list[RunRecord]:
        return list(self._history.get(task_id, ()))[: max(limit, 0)]

    async def record(self, rows: Sequence[RunRecord]) -> None:
        for row in rows:
            self._keep(row)

    def _keep(self, row: RunRecord) -> None:
        """Add a row to its task's history, newest first, and forget what has expired."""
        rows = self._history.get(row.task_id)
        if rows is None:
            rows = self._history[row.task_id] = deque(maxlen=self.history_size)
        rows.appendleft(replace(row, error_message=cut(row.error_message)))
        self._forget_expired(row.ended_at)

    def _forget_expired(self, now: datetime) -> None:
        for task_id, task in list(self._tasks.items()):
            if task.expires_at is not None and task.expires_at <= now:
                del self._tasks[task_id]
                self._history.pop(task_id, None)
        for task_id, rows in list(self._history.items()):
            if task_id not in self._tasks and now - rows[0].ended_at >= self.history_retention:
                del self._history[task_id]

    def _end(self, task_id: str, task: Task, at: datetime) -> None:
        """A task whose last run finished: kept, ended, until its retention is over."""
        task.due_at = task.ready_at = None
        task.ended_at = ms(at)
        left = datetime.max.replace(tzinfo=timezone.utc) - task.ended_at  # near year 9999
        task.expires_at = task.ended_at + min(self.history_retention, left)

    async def add_runs(
        self, task_id: str, occurrences: Sequence[datetime], *, max_instances: int, now: datetime
    ) -> bool:
        task = self._tasks.get(task_id)
        if task is None or task.ended_at is not None or task.parked_reason is not None:
            return False
        for occurrence in occurrences:
            run = self._new_run(task_id, ms(occurrence), 0, ms(now), True)
            task.waiting[run.fence] = max_instances
        return True

    async def unpark(
        self, task_id: str, *, due_at: datetime | None, ready_at: datetime | None
    ) -> bool:
        task = self._tasks.get(task_id)
        if task is None or task.parked_reason is None:
            return False
        task.parked_reason = None
        _schedule(task, due_at, ready_at)
        return True

    async def update(
        self, task_id: str, descriptor_json: str, *, due_at: datetime, ready_at: datetime
    ) -> bool:
        task = self._tasks.get(task_id)
        if task is None or task.ended_at is not None:
            return False
        task.descriptor_json = descriptor_json
        _schedule(task, due_at, ready_at)
        return True

    async def set_note(self, task_id: str, note: str | None) -> bool:
        task = self._tasks.get(task_id)
        if task is None:
            return False
        task.note = note
        return True

    async def beat(self, worker: WorkerInfo) -> None:
        self._workers[worker.id] = worker

    async def leave(self, worker_id: str) -> None:
        self._workers.pop(worker_id, None)

    async def workers(self, now: datetime) -> builtins.list[WorkerInfo]:
        for worker_id, worker in list(self._workers.items()):
            if worker.expires_at <= now:
                del self._workers[worker_id]
        return [self._workers[worker_id] for worker_id in sorted(self._workers)]


def _schedule(task: Task, due_at: datetime | None, ready_at: datetime | None) -> None:
    task.due_at = None if due_at is None else ms(due_at)
    task.ready_at = task.due_at if ready_at is None or due_at is None else ms(ready_at)
