"""What ``claim`` and ``finish`` do to the rows of the tasks they locked, in Python.

The PostgreSQL store locks the tasks a batch names (``SELECT ... FOR UPDATE``), reads
their runs, and hands them here as ``TaskRow``s; ``Changes`` gathers what the batch does
to them (rows updated or deleted, runs created or released), which the store then writes
in a few statements before the transaction commits. Pure: no I/O, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from cml_jobs.stores._ops import RunRecord
from cml_jobs.stores._records import (
    ClaimResult,
    ClaimStatus,
    Decision,
    Finish,
    Outcome,
    Run,
)

__all__ = [
    "Changes",
    "NewRun",
    "TaskRow",
    "apply_decision",
    "apply_finish",
    "later",
    "ms",
    "schedule_times",
    "storable",
]


def ms(at: datetime) -> datetime:
    """``at`` in UTC, truncated to the millisecond, as the store keeps time.

    Raises:
        ValueError: ``at`` is naive.
    """
    if at.utcoffset() is None:
        raise ValueError(f"{at!r} is naive; cml-jobs stores only timezone-aware datetimes")
    return at.astimezone(timezone.utc) - timedelta(microseconds=at.microsecond % 1000)


@dataclass
class TaskRow:
    """A locked task: its columns that a batch may change, and its runs under way
    (fence -> attempt)."""

    task_id: str
    due_at: datetime | None
    ready_at: datetime | None
    paused: bool
    parked: str | None
    last_run_at: datetime | None
    last_outcome: str | None
    last_error: str | None
    counts: dict[str, int]
    ended_at: datetime | None = None
    expires_at: datetime | None = None
    runs: set[int] = field(default_factory=set)
    deleted: bool = False

    def count(self, outcome: Outcome, n: int = 1) -> None:
        self.counts[outcome.value] = self.counts.get(outcome.value, 0) + n


@dataclass(frozen=True)
class NewRun:
    """A run to insert: fences are drawn from the sequence when the batch is written."""

    task_id: str
    occurrence_at: datetime
    index: int  # its position in the batch's results
    attempt: int = 1
    extra: bool = False


def next_attempt(stored: int) -> int:
    """The attempt of a re-issued run: the next, or the same for a run given back
    (``extend(release=True)`` stores its attempt negative)."""
    return -stored if stored < 0 else stored + 1


@dataclass
class Changes:
    """What a batch did: the rows it touched, runs to create, runs released, tasks
    whose every run is released (parked: also those created earlier in the batch), and
    history rows to keep."""

    touched: dict[str, TaskRow] = field(default_factory=dict)
    new_runs: list[NewRun] = field(default_factory=list)
    released: set[int] = field(default_factory=set)
    cleared: set[str] = field(default_factory=set)
    history: list[RunRecord] = field(default_factory=list)

    def touch(self, row: TaskRow) -> None:
        self.touched[row.task_id] = row

    def park(self, row: TaskRow, reason: str) -> None:
        row.parked = storable(reason)
        row.last_outcome = Outcome.PARKED.value
        row.count(Outcome.PARKED)
        self.cleared.add(row.task_id)
        row.runs = set()
        self.touch(row)

    def delete(self, row: TaskRow) -> None:
        row.deleted = True
        self.released |= row.runs
        row.runs = set()
        self.touch(row)


def storable(text: str | None) -> str | None:
    """``text`` as a PostgreSQL text column holds it: NUL, which it refuses, shown as
    U+FFFD (an error message may carry any character)."""
    return None if text is None else text.replace("\x00", "\ufffd")


def later(at: datetime, span: timedelta) -> datetime:
    """``at + span``, or the latest time a datetime holds (near year 9999)."""
    return at + min(span, datetime.max.replace(tzinfo=timezone.utc) - at)


def schedule_times(
    due_at: datetime | None, ready_at: datetime | None
) -> tuple[datetime | None, datetime | None]:
    """The due and ready times a task is given: no ready time without a due time, and
    ready when due unless told."""
    due = None if due_at is None else ms(due_at)
    return due, due if ready_at is None or due is None else ms(ready_at)


def _schedule(row: TaskRow, due_at: datetime | None, ready_at: datetime | None) -> None:
    row.due_at, row.ready_at = schedule_times(due_at, ready_at)


def _running(row: TaskRow, changes: Changes) -> int:
    return len(row.runs) + sum(new.task_id == row.task_id for new in changes.new_runs)


def apply_decision(
    decision: Decision, row: TaskRow | None, changes: Changes, index: int
) -> ClaimResult:
    """Apply one decision to its task's row (None: no such task); see ``claim``."""
    task_id = decision.task_id
    if row is None or row.deleted or row.paused or row.parked is not None:
        return ClaimResult(task_id, ClaimStatus.GONE)
    if row.due_at != ms(decision.expected_due_at):
        return ClaimResult(task_id, ClaimStatus.RACED)
    changes.touch(row)
    if decision.park_reason is not None:
        changes.park(row, decision.park_reason)
        return ClaimResult(task_id, ClaimStatus.PARKED)
    status = ClaimStatus.ADVANCED
    run: Run | None = None
    if decision.run_at is not None and _running(row, changes) >= decision.max_instances:
        status = ClaimStatus.SKIPPED
        row.last_outcome = Outcome.SKIPPED.value
        row.count(Outcome.SKIPPED)
    elif decision.run_at is not None:
        status = ClaimStatus.CLAIMED
        run = Run(task_id, 0, ms(decision.run_at))  # its fence is drawn on write
        changes.new_runs.append(NewRun(task_id, run.occurrence_at, index))
    if decision.missed:
        row.count(Outcome.MISSED, decision.missed)
        if status is ClaimStatus.ADVANCED:
            row.last_outcome = Outcome.MISSED.value
    _schedule(row, decision.next_due_at, decision.next_ready_at)
    if row.due_at is None and _running(row, changes) == 0:
        changes.delete(row)  # a one-time task whose occurrence was missed has ended
    return ClaimResult(task_id, status, run)


def apply_finish(
    finish: Finish, row: TaskRow | None, changes: Changes, retention: timedelta
) -> bool:
    """Apply one finish to its task's row (None: no such task); see ``finish``. A task
    that ends with a history row is kept, ended, for ``retention``."""
    fence = finish.run.fence
    if row is None or row.deleted or fence not in row.runs:
        return False  # a stale fence: the run was re-issued, or its task cancelled
    row.runs.discard(fence)
    changes.released.add(fence)
    changes.touch(row)
    if finish.started_at is not None:
        row.last_run_at = ms(finish.started_at)
    if finish.history is not None:
        changes.history.append(finish.history)
    if finish.outcome is Outcome.PARKED:
        changes.park(row, finish.error or "parked")
        return True
    row.last_outcome = Outcome(finish.outcome).value
    row.last_error = storable(finish.error)
    row.count(Outcome(finish.outcome))
    ended = row.due_at is None and not row.runs and row.parked is None
    if ended and not finish.end_task and finish.history is not None:
        _end(row, finish.history.ended_at, retention)  # a one-time task's run
    elif finish.end_task or ended:
        changes.delete(row)
    return True


def _end(row: TaskRow, at: datetime, retention: timedelta) -> None:
    """A task whose last run finished: kept, ended, until its retention is over."""
    row.due_at = row.ready_at = None
    row.ended_at = ms(at)
    row.expires_at = later(row.ended_at, retention)
