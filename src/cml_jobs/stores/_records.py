"""The records a ``ScheduleStore`` passes: tasks, decisions, runs and how they end.

Plain frozen dataclasses and string enums, shared by every store and the engine; the
contract they serve is written once, on ``ScheduleStore`` in ``_base``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime

from cml_jobs._outcome import Outcome
from cml_jobs.stores._ops import RunRecord

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
    "TaskState",
]


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
        unreadable: ids listed as due whose stored state is no task at all (a key of
            another type written around cml-jobs), so they could not even be parked; the
            store took them out of its due index, so each is reported once.
    """

    tasks: list[DueTask]
    next_ready_at: datetime | None
    generation: str = ""
    unreadable: tuple[str, ...] = ()


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
        extra: an extra run (``trigger_task``, ``backfill``): it runs however late it
            is, without waiting for jitter.
    """

    task_id: str
    fence: int
    occurrence_at: datetime
    attempt: int = 1
    extra: bool = False


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
    """The outcome of one ``Decision``: its status and, when ``CLAIMED``, the run; when
    ``PARKED``, the reason (the decision's, or the store's when it found the task's stored
    state unusable)."""

    task_id: str
    status: ClaimStatus
    run: Run | None = None
    reason: str | None = None


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
        history: the run's history row, added to the task's history (kept for the
            store's ``history_retention`` once the task is gone); with it, a one-time
            task whose run this is stays, ended at ``history.ended_at``, for that long.
    """

    run: Run
    outcome: Outcome
    error: str | None = None
    end_task: bool = False
    started_at: datetime | None = None
    history: RunRecord | None = None


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
        note: an operator's note (``pause_task(note=...)``), or None.
        ended_at: when the task ended (its last run finished), or None while it lives;
            an ended task is kept, for its outcome and history, until ``expires_at``.
        expires_at: when an ended task is forgotten.
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
    note: str | None = None
    ended_at: datetime | None = None
    expires_at: datetime | None = None
