"""The persistence layer's contract: the ``ScheduleStore`` Protocol and the records it passes.

A store keeps three things per task: its descriptor (text, opaque to the store), its
schedule state (the next occurrence, paused, parked, the last outcome) and its *runs*:
the occurrences handed out for execution and not yet finished, each under a lease and a
fencing token. Everything that decides *when* lives outside the store; the store only
applies decisions atomically and is always *given* ``now``.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

# The records live in _records; they are re-exported here, where the contract is.
from cml_jobs.stores._records import (
    ClaimedRun,
    ClaimResult,
    ClaimStatus,
    Decision,
    DueBatch,
    DueTask,
    Finish,
    NewTask,
    Outcome,
    Run,
    TaskState,
)

__all__ = [
    "ClaimResult",
    "ClaimStatus",
    "ClaimedRun",
    "Decision",
    "DueBatch",
    "DueTask",
    "Finish",
    "NewTask",
    "Outcome",
    "Run",
    "ScheduleStore",
    "TaskState",
    "TransactionalStore",
    "WakeupSource",
]


@runtime_checkable
class ScheduleStore(Protocol):
    """Where tasks and their runs live. Memory, Redis and PostgreSQL implement it; so can
    others.

    Ten methods in pairs: ``add``/``remove`` a task, ``set_paused`` on and off, ``poll``
    then ``claim`` due occurrences (or ``reclaim_expired`` lost ones), ``extend`` a run's
    lease and ``finish`` it; ``get`` and ``list`` read.

    Every method is atomic with respect to every other call, from any process. Times are
    aware datetimes; a store keeps them to the millisecond. The store never reads the
    clock: ``now`` is always given. A run is *under way* from its claim until its finish:
    the worker that claimed it decides when its body starts, so no call is needed between
    the two.
    """

    async def add(self, task: NewTask, *, replace: bool) -> bool:
        """Add a task, due at ``task.due_at`` (claimable from ``task.ready_at``).

        An existing task with the same id and the same ``descriptor_json`` is left as it is
        and False is returned (scheduling is idempotent). With a different descriptor,
        ``replace=False`` raises ``TaskExistsError``; ``replace=True`` drops the old task
        and its runs (their fences stop being valid) and adds the new one.

        Returns:
            True when the task was written.
        """
        ...

    async def remove(self, task_id: str) -> int | None:
        """Delete a task and invalidate all its runs.

        Returns:
            How many of its runs were under way (claimed and not finished): their workers
            stop them at their next ``extend``. None if there was no task. Once this
            returns, no run of the task can be claimed or re-issued.
        """
        ...

    async def get(self, task_id: str) -> TaskState | None:
        """The task's state, or None."""
        ...

    async def list(self) -> builtins.list[TaskState]:
        """Every task, parked and paused ones included, ordered by id."""
        ...

    async def set_paused(
        self, task_id: str, *, paused: bool, due_at: datetime | None, ready_at: datetime | None
    ) -> bool:
        """Pause a task (it is not claimable), or resume it due at ``due_at``.

        Returns False if the task does not exist.
        """
        ...

    async def poll(self, now: datetime, limit: int) -> DueBatch:
        """Up to ``limit`` tasks whose ready time is at or before ``now``, earliest first,
        the earliest ready time among the schedulable tasks not returned, and the store's
        generation (created on first use): everything a dispatcher needs for one tick and
        the sleep after it.

        Paused and parked tasks, and tasks with no next occurrence, are never due. A task
        whose stored due time cannot be read is parked with that reason, not returned; an
        id whose stored state is no task at all is dropped from the due tasks and named
        once in ``unreadable``.
        """
        ...

    async def claim(
        self, decisions: Sequence[Decision], *, lease_until: datetime
    ) -> builtins.list[ClaimResult]:
        """Apply each decision atomically, if the task still has ``expected_due_at``.

        For each decision whose task exists, is not paused or parked, and still has
        ``expected_due_at``: with ``park_reason``, or when its stored state cannot be
        used (a count that is not a number), the task is parked (``PARKED``, with the
        reason).
        Otherwise, when ``run_at`` is set and fewer than ``max_instances`` runs are under
        way, a run for ``run_at`` is created under a new fence with its lease ending at
        ``lease_until`` (``CLAIMED``); when ``run_at`` is set but the limit is reached, the
        occurrence is recorded as skipped (``SKIPPED``); when ``run_at`` is None, nothing
        runs (``ADVANCED``). In these three cases the task's next occurrence becomes
        ``next_due_at`` (or none) and ``missed`` is added to its missed count; a task left
        with no next occurrence and no run has ended and is deleted. A task whose due time
        changed meanwhile is left untouched (``RACED``); one that is gone, paused or
        parked gives ``GONE``. Every value is checked before anything is written.

        Returns:
            One result per decision, in order.
        """
        ...

    async def reclaim_expired(
        self, *, now: datetime, lease_until: datetime, limit: int
    ) -> builtins.list[ClaimedRun]:
        """Re-issue up to ``limit`` runs whose lease expired at or before ``now``.

        Each expired run is replaced by a run of the same occurrence with a new fence,
        ``attempt + 1`` (the same attempt for a run given back with ``extend(...,
        release=True)``: no worker was lost) and its lease ending at ``lease_until``; the
        old fence stops being valid. Runs of tasks that no longer exist, or are parked,
        are dropped.
        """
        ...

    async def extend(
        self, runs: Sequence[Run], *, lease_until: datetime, release: bool = False
    ) -> builtins.list[bool]:
        """Move the lease of each run still valid to ``lease_until`` (the heartbeat; a
        ``lease_until`` in the past gives the run back for an immediate re-issue).

        With ``release``, a worker that stops cleanly gives the runs back: their re-issue
        keeps their attempt, so a rolling restart is not taken for a lost worker.

        Returns:
            Per run, whether its fence is still valid; a worker stops a run that is not.
        """
        ...

    async def finish(self, finishes: Sequence[Finish]) -> builtins.list[bool]:
        """Record how runs ended and release them, each only if its fence is still valid.

        With ``end_task`` the task is deleted (a job that stopped its recurrence); with
        ``Outcome.PARKED`` it is parked with ``error`` as the reason. A task with no next
        occurrence ends once its last run is finished (a one-time task ends after its
        run), unless it is parked: with ``history`` it is kept, ended (``ended_at``), for
        the store's history retention, else deleted. ``history`` is added to the task's
        run history. A stale fence (a late write from a run that was re-issued or
        cancelled) writes nothing. With ``started_at``, that time becomes the task's last
        run time.

        Returns:
            Per finish, whether it was recorded.
        """
        ...


# Capabilities some stores have beyond the contract: each is a Protocol of its own, which
# the engine checks with isinstance, so that ScheduleStore stays small.


@runtime_checkable
class WakeupSource(Protocol):
    """A store that tells a dispatcher when a task was scheduled or resumed by any
    process, so that it need not wait for its next poll (PostgreSQL's LISTEN/NOTIFY)."""

    def wakeups(self, callback: Callable[[], None]) -> AbstractAsyncContextManager[None]:
        """Call ``callback`` (on this event loop) whenever any process schedules or
        resumes a task, from entry until exit; a missed notification (a lost connection)
        is made up for by a call, never lost silently."""
        ...


@runtime_checkable
class TransactionalStore(Protocol):
    """A store that writes inside an app's own database transaction."""

    def within(self, connection: Any) -> ScheduleStore:
        """The store on ``connection``: what it writes there commits or rolls back with
        the transaction open on that connection.

        Raises:
            ConfigurationError: ``connection`` is not a connection this store can use.
        """
        ...
