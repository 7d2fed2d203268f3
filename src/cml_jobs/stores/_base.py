"""The persistence layer's contract: the ``ScheduleStore`` Protocol and the records it passes.

A store keeps three things per task: its descriptor (text, opaque to the store), its
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
        descriptor_json: the encoded descriptor.
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
    """A task whose next occurrence is ready, as ``ScheduleStore.poll`` reads it."""

    task_id: str
    due_at: datetime
    descriptor_json: str
    trace_context: str | None = None


@dataclass(frozen=True)
class DueBatch:
    """What ``ScheduleStore.poll`` found.

    Attributes:
        tasks: the due tasks, earliest first.
        next_ready_at: the earliest ready time among the tasks not returned, or None.
        generation: an id the store keeps for as long as it keeps its data; a different
            one later means everything stored before was lost.
    """

    tasks: list[DueTask]
    next_ready_at: datetime | None
    generation: str = ""


@dataclass(frozen=True)
class Decision:
    """What the dispatcher decided for one due task (see ``ScheduleStore.claim``).

    Attributes:
        task_id: the task.
        expected_due_at: the ``due_at`` the decision was made from; it applies only if the
            task still has it (compare-and-set).
        run_at: the occurrence to hand out as a run, or None to run nothing.
        next_due_at: the task's next occurrence, or None when it has no more.
        next_ready_at: when ``next_due_at`` may be claimed (with jitter); None means at
            ``next_due_at``.
        max_instances: runs of this task allowed at once.
        missed: occurrences recorded as missed by this decision.
        park_reason: take the task out of the schedule with this reason instead (its
            stored descriptor cannot run); every other field but ``task_id`` and
            ``expected_due_at`` is then ignored.
    """

    task_id: str
    expected_due_at: datetime
    run_at: datetime | None
    next_due_at: datetime | None
    next_ready_at: datetime | None = None
    max_instances: int = 1
    missed: int = 0
    park_reason: str | None = None


class ClaimStatus(str, enum.Enum):
    """The result of applying one ``Decision``."""

    CLAIMED = "claimed"  # a run was handed out
    ADVANCED = "advanced"  # nothing to run; the schedule moved on
    SKIPPED = "skipped"  # the occurrence came due while max_instances runs were going
    PARKED = "parked"  # the task was parked, as the decision asked
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
    """

    task_id: str
    fence: int
    occurrence_at: datetime
    attempt: int = 1


@dataclass(frozen=True)
class ClaimedRun:
    """A run with what its worker needs to execute it, as ``claim`` and
    ``reclaim_expired`` hand it out.

    Attributes:
        run: the run.
        descriptor_json: the task's descriptor, as stored.
        trace_context: the task's ``trace_context``.
    """

    run: Run
    descriptor_json: str
    trace_context: str | None = None


@dataclass(frozen=True)
class ClaimResult:
    """The outcome of one ``Decision``: its status and, when ``CLAIMED``, the run."""

    task_id: str
    status: ClaimStatus
    run: Run | None = None


@dataclass(frozen=True)
class Finish:
    """How one run ended, for ``ScheduleStore.finish``.

    Attributes:
        run: the run, with its fence.
        outcome: how it ended; ``PARKED`` parks the task with ``error`` as the reason.
        error: a one-line summary of the failure, if any.
        end_task: the job ended its recurrence: delete the task.
        started_at: when the run started (its body was called), recorded as the task's
            last run time; None for a run that never started (missed, parked).
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
        whose stored due time cannot be read is parked with that reason, not returned.
        """
        ...

    async def claim(
        self, decisions: Sequence[Decision], *, lease_until: datetime
    ) -> builtins.list[ClaimResult]:
        """Apply each decision atomically, if the task still has ``expected_due_at``.

        For each decision whose task exists, is not paused or parked, and still has
        ``expected_due_at``: with ``park_reason`` the task is parked (``PARKED``).
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
        ``attempt + 1`` and its lease ending at ``lease_until``; the old fence stops being
        valid. Runs of tasks that no longer exist, or are parked, are dropped.
        """
        ...

    async def extend(self, runs: Sequence[Run], *, lease_until: datetime) -> builtins.list[bool]:
        """Move the lease of each run still valid to ``lease_until`` (the heartbeat; a
        ``lease_until`` in the past gives the run back for an immediate re-issue).

        Returns:
            Per run, whether its fence is still valid; a worker stops a run that is not.
        """
        ...

    async def finish(self, finishes: Sequence[Finish]) -> builtins.list[bool]:
        """Record how runs ended and release them, each only if its fence is still valid.

        With ``end_task`` the task is deleted (a job that stopped its recurrence); with
        ``Outcome.PARKED`` it is parked with ``error`` as the reason. A task with no next
        occurrence is deleted once its last run is finished (a one-time task ends after
        its run), unless it is parked. A stale fence (a late write from a run that was
        re-issued or cancelled) writes nothing. With ``started_at``, that time becomes the
        task's last run time.

        Returns:
            Per finish, whether it was recorded.
        """
        ...
