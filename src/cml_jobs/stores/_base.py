"""The persistence layer's contract: the ``ScheduleStore`` Protocol and the records it passes.

A store keeps three things per task: its descriptor (JSON text, opaque to the store), its
schedule state (the next occurrence, paused, parked, the last outcome) and its *runs*:
the occurrences handed out for execution and not yet finished, each under a lease and a
fencing token. Everything that decides *when* lives outside the store; the store only
applies decisions atomically and is always *given* ``now``.
"""

from __future__ import annotations

import builtins
import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, runtime_checkable

__all__ = [
    "ClaimResult",
    "ClaimStatus",
    "Decision",
    "DueBatch",
    "DueTask",
    "Finish",
    "NewTask",
    "Outcome",
    "Run",
    "ScheduleStore",
    "StartedRun",
    "TaskState",
]


class Outcome(str, enum.Enum):
    """How an occurrence ended."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    MISSED = "missed"
    SKIPPED = "skipped"
    STOPPED = "stopped"
    CANCELLED = "cancelled"
    PARKED = "parked"


@dataclass(frozen=True)
class NewTask:
    """A task as the bus hands it to ``ScheduleStore.add``.

    Attributes:
        task_id: the descriptor's id.
        descriptor_json: the validated descriptor, as JSON.
        due_at: its first occurrence.
        ready_at: when that occurrence may be claimed (``due_at`` plus jitter).
        trace_context: the W3C ``traceparent`` of the span that scheduled the task, or
            None; every run's span links to it.
    """

    task_id: str
    descriptor_json: str
    due_at: datetime
    ready_at: datetime
    trace_context: str | None = None


@dataclass(frozen=True)
class DueTask:
    """A task whose next occurrence is ready, as read by ``ScheduleStore.due``."""

    task_id: str
    due_at: datetime
    descriptor_json: str
    trace_context: str | None = None


@dataclass(frozen=True)
class DueBatch:
    """What ``ScheduleStore.poll`` found: the due tasks, and when the next one is ready."""

    tasks: list[DueTask]
    next_ready_at: datetime | None


@dataclass(frozen=True)
class Decision:
    """What the dispatcher decided for one due task (see ``ScheduleStore.claim``).

    Attributes:
        task_id: the task.
        expected_due_at: the ``due_at`` the decision was made from; the claim applies only
            if the task still has it (compare-and-set).
        run_at: the occurrence to hand out as a run, or None to run nothing.
        next_due_at: the task's next occurrence, or None when it has no more.
        next_ready_at: when ``next_due_at`` may be claimed (with jitter).
        max_instances: runs of this task allowed at once.
        missed: occurrences recorded as missed by this decision.
    """

    task_id: str
    expected_due_at: datetime
    run_at: datetime | None
    next_due_at: datetime | None
    next_ready_at: datetime | None
    max_instances: int = 1
    missed: int = 0


class ClaimStatus(str, enum.Enum):
    """The result of applying one ``Decision``."""

    CLAIMED = "claimed"  # a run was handed out
    ADVANCED = "advanced"  # nothing to run; the schedule moved on
    SKIPPED = "skipped"  # the occurrence came due while max_instances runs were going
    RACED = "raced"  # another dispatcher applied a decision first; nothing changed
    GONE = "gone"  # the task was cancelled, paused or parked meanwhile


@dataclass(frozen=True)
class Run:
    """One occurrence handed out for execution, identified by its fencing token.

    Attributes:
        task_id: the task.
        fence: a token unique to this run; every write about the run must present it.
        occurrence_at: the intended time of the occurrence.
        attempt: 1 for the first attempt, +1 for each re-run after a lost lease.
        trace_context: the task's ``trace_context``, when the dispatcher knew it; not part
            of the run's identity.
    """

    task_id: str
    fence: int
    occurrence_at: datetime
    attempt: int = 1
    trace_context: str | None = field(default=None, compare=False)


@dataclass(frozen=True)
class ClaimResult:
    """The outcome of one ``Decision``: its status and, when ``CLAIMED``, the run."""

    task_id: str
    status: ClaimStatus
    run: Run | None = None


@dataclass(frozen=True)
class StartedRun:
    """A run that ``ScheduleStore.start`` confirmed, with the descriptor to execute."""

    run: Run
    descriptor_json: str


@dataclass(frozen=True)
class Finish:
    """How one run ended, for ``ScheduleStore.finish_many``.

    Attributes:
        run: the run, with its fence.
        outcome: how it ended.
        error: a one-line summary of the failure, if any.
        end_task: the job ended its recurrence: delete the task.
        started_at: when the run started, recorded as the task's last run time (a run
            executed by the worker that claimed it is never ``start``-ed).
    """

    run: Run
    outcome: Outcome
    error: str | None = None
    end_task: bool = False
    started_at: datetime | None = None


@dataclass(frozen=True)
class TaskState:
    """What the store knows about one task.

    Attributes:
        task_id: the task.
        descriptor_json: its descriptor, as stored (possibly invalid if tampered with).
        due_at: the next occurrence, or None when none is left.
        paused: paused by ``set_paused``.
        parked_reason: why the task was parked, or None.
        running: runs handed out and not finished.
        last_run_at: when the latest run started.
        last_outcome: how the latest occurrence ended.
        last_error: a one-line summary of the latest failure.
        counts: occurrences per outcome since the task was added.
        trace_context: the ``trace_context`` the task was added with.
    """

    task_id: str
    descriptor_json: str
    due_at: datetime | None
    paused: bool = False
    parked_reason: str | None = None
    running: int = 0
    last_run_at: datetime | None = None
    last_outcome: Outcome | None = None
    last_error: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    trace_context: str | None = None


@runtime_checkable
class ScheduleStore(Protocol):
    """Where tasks and their runs live. Memory and Redis implement it; so can others.

    Every method is atomic with respect to every other call, from any process. Times are
    aware datetimes; a store keeps them to the millisecond. The store never reads the
    clock: ``now`` is always given.
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
        """Delete a task and invalidate all its runs, atomically with ``confirm``.

        Returns how many of its runs had started (been confirmed): their workers stop them
        at the next heartbeat. None if there was no task. A run not confirmed by then can
        never start.
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

    async def park(self, task_id: str, reason: str) -> bool:
        """Take a task out of the schedule, keeping it with ``reason``. False if none.

        Its runs stop being valid: a parked task is never run, and never deleted
        except by ``remove`` or a replacing ``add``.
        """
        ...

    async def due(self, now: datetime, limit: int) -> builtins.list[DueTask]:
        """Up to ``limit`` tasks whose ready time is at or before ``now``, earliest first.

        Paused and parked tasks, and tasks with no next occurrence, are never due.
        """
        ...

    async def poll(self, now: datetime, limit: int) -> DueBatch:
        """``due(now, limit)``, and in the same call the earliest ready time among the
        schedulable tasks it did not return (None if there are none): everything a
        dispatcher needs for one tick and the sleep after it."""
        ...

    async def generation(self) -> str:
        """An id the store keeps for as long as it keeps its data, created on first use.

        A different answer later means everything stored before was lost (a Redis
        restarted without persistence): workers report it, and apps re-declare tasks.
        """
        ...

    async def next_ready_at(self) -> datetime | None:
        """The earliest ready time of any task or lease expiry of any run, or None."""
        ...

    async def claim(
        self, decisions: Sequence[Decision], *, now: datetime, lease_until: datetime
    ) -> builtins.list[ClaimResult]:
        """Apply each decision atomically, if the task still has ``expected_due_at``.

        For each decision whose task exists, is not paused or parked, and still has
        ``expected_due_at``: when ``run_at`` is set and fewer than ``max_instances`` runs
        are going, a run for ``run_at`` is created under a new fence with its lease ending
        at ``lease_until`` (``CLAIMED``); when ``run_at`` is set but the limit is reached,
        the occurrence is recorded as skipped (``SKIPPED``); when ``run_at`` is None,
        nothing runs (``ADVANCED``). In all three cases the task's next occurrence becomes
        ``next_due_at`` (or none) and ``missed`` is added to its missed count; a task left
        with no next occurrence and no run has ended and is deleted. A task whose due time
        changed meanwhile is left untouched (``RACED``); one that is gone, paused or
        parked gives ``GONE``. A None ``next_ready_at`` means ready at ``next_due_at``.

        Returns:
            One result per decision, in order.
        """
        ...

    async def reclaim_expired(
        self, *, now: datetime, lease_until: datetime, limit: int
    ) -> builtins.list[Run]:
        """Re-issue up to ``limit`` runs whose lease expired at or before ``now``.

        Each expired run is replaced by a run of the same occurrence with a new fence,
        ``attempt + 1`` and its lease ending at ``lease_until``; the old fence stops being
        valid. Runs of tasks that no longer exist are dropped.
        """
        ...

    async def start(self, run: Run, *, now: datetime, lease_until: datetime) -> StartedRun | None:
        """Confirm that ``run`` may execute: its fence is still valid.

        Extends its lease to ``lease_until`` and records ``now`` as the task's last run
        time. Returns None when the fence is no longer valid (the run was cancelled,
        re-issued or finished), in which case the caller must not execute it.
        """
        ...

    async def confirm(self, runs: Sequence[Run]) -> builtins.list[bool]:
        """For each run, whether its fence is still valid, marking each valid run started.

        A worker calls this just before a job's body: a run is started from then on, and
        ``remove`` counts it.
        """
        ...

    async def extend(self, runs: Sequence[Run], *, lease_until: datetime) -> builtins.list[bool]:
        """Extend the leases of runs still valid; False for each run whose fence is not."""
        ...

    async def finish(
        self,
        run: Run,
        outcome: Outcome,
        *,
        now: datetime,
        error: str | None = None,
        end_task: bool = False,
        started_at: datetime | None = None,
    ) -> bool:
        """Record how a run ended and release it, if its fence is still valid.

        With ``end_task`` the task is deleted (a job that stopped its recurrence). A task
        with no next occurrence is deleted once its last run is finished (a one-time task
        ends after its run), unless it is parked. Returns False, writing nothing, for a
        stale fence: a late write from a run that was re-issued or cancelled. With
        ``started_at``, that time becomes the task's last run time.
        """
        ...

    async def finish_many(self, finishes: Sequence[Finish]) -> builtins.list[bool]:
        """``finish`` for several runs in one atomic call; one result per finish, in order."""
        ...
