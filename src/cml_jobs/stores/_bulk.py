"""An optional capability of a store: adding and removing many tasks in one atomic step.

A store that implements ``BulkScheduleStore`` beside ``ScheduleStore`` lets
``BackgroundTasksBus.schedule_tasks`` and ``cancel_tasks`` write a whole batch in one
round trip; with any other store the bus adds and removes the tasks one call at a time.
"""

from __future__ import annotations

import builtins
import enum
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from cml_jobs.exceptions import TaskExistsError
from cml_jobs.stores._records import NewTask

__all__ = ["AddResult", "BulkScheduleStore", "task_exists"]


class AddResult(str, enum.Enum):
    """What adding one task of a batch did."""

    WRITTEN = "written"  # the task was added (or replaced)
    UNCHANGED = "unchanged"  # the same descriptor was already there: nothing written
    CONFLICT = "conflict"  # a different task has this id and replace is False: not written


@runtime_checkable
class BulkScheduleStore(Protocol):
    """Adds and removes many tasks per call, each call one atomic step.

    Each task is treated exactly as ``ScheduleStore.add`` and ``remove`` treat one, except
    that a conflict is reported (``AddResult.CONFLICT``) instead of raised, so that the
    rest of the batch is written.
    """

    async def add_many(
        self, tasks: Sequence[NewTask], *, replace: bool
    ) -> builtins.list[AddResult]:
        """Add every task in one atomic step (see ``ScheduleStore.add``).

        Returns:
            One result per task, in order.
        """
        ...

    async def remove_many(self, task_ids: Sequence[str]) -> builtins.list[int | None]:
        """Remove every task in one atomic step (see ``ScheduleStore.remove``).

        Returns:
            Per id, how many of its runs were under way, or None if there was no task.
        """
        ...


def task_exists(task_id: str) -> TaskExistsError:
    """The error for a different task already scheduled under ``task_id`` (no replace)."""
    return TaskExistsError(
        f"a different task with id {task_id!r} is already scheduled; pass replace=True to "
        "replace it, or cancel it first"
    )
