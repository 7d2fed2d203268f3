"""The operations side of a store: run history, the worker registry, extra runs and the
task edits an operator makes (unpark, update, notes).

Kept apart from ``ScheduleStore`` (the engine's hot path, ten methods) so that a store can
run jobs without it; the memory, Redis and PostgreSQL stores implement both. History rows
of runs that finish are written by ``ScheduleStore.finish`` itself (``Finish.history``),
in the same atomic step; ``record`` is for outcomes decided elsewhere (missed, skipped,
coalesced occurrences).
"""

from __future__ import annotations

import builtins
import contextlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol, runtime_checkable

from cml_jobs._outcome import Outcome

__all__ = [
    "DEFAULT_HISTORY_RETENTION",
    "DEFAULT_HISTORY_SIZE",
    "MAX_ERROR_BYTES",
    "OperationsStore",
    "RunRecord",
    "WorkerInfo",
]

#: Runs kept per task, newest first (setting ``history_size``).
DEFAULT_HISTORY_SIZE = 100
#: How long a task that ended (a one-time task after its run) stays visible, with its
#: outcome and history (setting ``history_retention``).
DEFAULT_HISTORY_RETENTION = timedelta(days=7)
#: An error message in a history row is cut to this many bytes (UTF-8), so that a task's
#: history stays bounded: about ``history_size`` x 1.3 KiB at most.
MAX_ERROR_BYTES = 1024


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat()


def _seconds(span: timedelta | None) -> float | None:
    return None if span is None else span.total_seconds()


@dataclass(frozen=True)
class RunRecord:
    """One row of a task's run history: how one occurrence ended.

    Attributes:
        task_id: the task.
        occurrence_at: the occurrence (for an extra run, the time it was asked for).
        outcome: how it ended.
        ended_at: when the outcome was recorded.
        started_at: when the run's body was called; None for an occurrence that never
            ran (missed, skipped, coalesced, parked).
        attempt: the attempt that ended it (1, or more after retries or a lost worker).
        worker: the id of the worker that recorded it (``host:pid``).
        lateness: start time minus occurrence time, jitter excluded; None if not started.
        duration: from start to outcome, retries included; None if not started.
        error_type: the exception's qualified name, on failures.
        error_message: the error's one-line summary, redacted as the job's
            ``redact_data`` asks and cut to ``MAX_ERROR_BYTES``.
    """

    task_id: str
    occurrence_at: datetime
    outcome: Outcome
    ended_at: datetime
    started_at: datetime | None = None
    attempt: int = 1
    worker: str = ""
    lateness: timedelta | None = None
    duration: timedelta | None = None
    error_type: str | None = None
    error_message: str | None = None

    def to_json(self) -> str:
        """The row as compact JSON (times ISO 8601, spans in seconds), as stores keep it;
        the error message cut to ``MAX_ERROR_BYTES``."""
        row: dict[str, Any] = asdict(self)
        row.update(
            error_message=cut(self.error_message),
            outcome=self.outcome.value,
            occurrence_at=_iso(self.occurrence_at),
            ended_at=_iso(self.ended_at),
            started_at=_iso(self.started_at),
            lateness=_seconds(self.lateness),
            duration=_seconds(self.duration),
        )
        return json.dumps({k: v for k, v in row.items() if v is not None}, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> RunRecord:
        """The row ``to_json`` wrote.

        Raises:
            ValueError: the text is not such a row (tampered with).
        """
        with _reading(raw, "run history row") as row:
            return cls(
                task_id=str(row["task_id"]),
                occurrence_at=datetime.fromisoformat(row["occurrence_at"]),
                outcome=Outcome(row["outcome"]),
                ended_at=datetime.fromisoformat(row["ended_at"]),
                started_at=_at(row.get("started_at")),
                attempt=int(row.get("attempt", 1)),
                worker=str(row.get("worker", "")),
                lateness=_span(row.get("lateness")),
                duration=_span(row.get("duration")),
                error_type=row.get("error_type"),
                error_message=row.get("error_message"),
            )


@contextlib.contextmanager
def _reading(raw: str | bytes, what: str) -> Iterator[Any]:
    """``raw`` parsed as JSON, for a block that builds a record from it: a missing or
    mistyped field there is a ``ValueError`` that names ``what`` and shows ``raw``."""
    try:
        yield json.loads(raw)
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not a {what}: {raw!r:.200}") from exc


def _at(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _span(value: float | None) -> timedelta | None:
    return None if value is None else timedelta(seconds=float(value))


def cut(message: str | None, limit: int = MAX_ERROR_BYTES) -> str | None:
    """``message`` cut to ``limit`` bytes of UTF-8 (on a character boundary), marked with
    an ellipsis when it was cut."""
    if message is None or len(message.encode()) <= limit:
        return message
    return message.encode()[: limit - 3].decode(errors="ignore") + "..."


@dataclass(frozen=True)
class WorkerInfo:
    """A worker as it registers itself at start and on every heartbeat.

    Attributes:
        id: unique among live workers: ``host:pid`` (``host:pid/n`` for the n-th engine
            of one process).
        host: the host name.
        pid: the process id.
        version: the cml-jobs version it runs.
        started_at: when it started.
        heartbeat_at: its latest heartbeat.
        expires_at: when it drops out of ``list_workers`` unless it beats again (a
            worker that crashed drops out then).
        running: runs executing in it now.
        max_jobs: runs it executes at once at most.
    """

    id: str
    host: str
    pid: int
    version: str
    started_at: datetime
    heartbeat_at: datetime
    expires_at: datetime
    running: int = 0
    max_jobs: int = 0

    def to_json(self) -> str:
        """The worker as compact JSON, as stores keep it."""
        row: dict[str, Any] = asdict(self)
        for name in ("started_at", "heartbeat_at", "expires_at"):
            row[name] = _iso(row[name])
        return json.dumps(row, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> WorkerInfo:
        """The worker ``to_json`` wrote.

        Raises:
            ValueError: the text is not such a worker (tampered with).
        """
        with _reading(raw, "worker record") as row:
            times = {
                name: datetime.fromisoformat(row[name])
                for name in ("started_at", "heartbeat_at", "expires_at")
            }
            return cls(
                id=str(row["id"]),
                host=str(row["host"]),
                pid=int(row["pid"]),
                version=str(row["version"]),
                running=int(row.get("running", 0)),
                max_jobs=int(row.get("max_jobs", 0)),
                **times,
            )


@runtime_checkable
class OperationsStore(Protocol):
    """What a store keeps for operators, beside the schedule. Memory, Redis and PostgreSQL
    implement it.

    As for ``ScheduleStore``: every method is atomic, times are aware and kept to the
    millisecond, and ``now`` is always given.
    """

    async def history(self, task_id: str, limit: int) -> builtins.list[RunRecord]:
        """Up to ``limit`` of the task's latest runs, newest first ([] when none).

        A store keeps the ``history_size`` latest rows per task (its constructor's
        setting); rows that cannot be read (tampered with) are left out.
        """
        ...

    async def record(self, rows: Sequence[RunRecord]) -> None:
        """Add rows to their tasks' histories: outcomes that no ``finish`` records
        (missed, skipped and coalesced occurrences). Rows of unknown tasks are dropped."""
        ...

    async def add_runs(
        self, task_id: str, occurrences: Sequence[datetime], *, max_instances: int, now: datetime
    ) -> bool:
        """Queue one extra run per occurrence (``trigger_task``, ``backfill``).

        Each becomes a run under way at once (it counts in ``TaskState.running``), waiting
        to be handed out by ``reclaim_expired`` with ``attempt`` 1 and ``Run.extra`` set,
        as soon as fewer than ``max_instances`` of the task's handed-out runs are going.
        So every extra run is handed out exactly once, by whichever dispatcher comes
        first, and never beside more than ``max_instances - 1`` other runs.

        Returns:
            False when the task does not exist, has ended, or is parked (nothing queued).
        """
        ...

    async def unpark(
        self, task_id: str, *, due_at: datetime | None, ready_at: datetime | None
    ) -> bool:
        """Take a parked task back into the schedule, due at ``due_at`` (the reason is
        cleared; counts and history stay).

        Returns:
            False when the task does not exist or is not parked (nothing changed).
        """
        ...

    async def update(
        self, task_id: str, descriptor_json: str, *, due_at: datetime, ready_at: datetime
    ) -> bool:
        """Replace a task's descriptor and next occurrence, keeping its counts, its last
        outcome, its history, its note and its runs under way (they finish under the old
        descriptor). A paused or parked task stays so.

        Returns:
            False when the task does not exist or has ended (nothing changed).
        """
        ...

    async def set_note(self, task_id: str, note: str | None) -> bool:
        """Attach an operator's note to a task (None removes it).

        Returns:
            False when the task does not exist.
        """
        ...

    async def beat(self, worker: WorkerInfo) -> None:
        """Register a worker, or refresh it: it is listed until ``worker.expires_at``."""
        ...

    async def leave(self, worker_id: str) -> None:
        """Remove a worker that stops cleanly."""
        ...

    async def workers(self, now: datetime) -> builtins.list[WorkerInfo]:
        """The workers whose registration has not expired at ``now``, ordered by id (the
        expired ones are forgotten)."""
        ...
