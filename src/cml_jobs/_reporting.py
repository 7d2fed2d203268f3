"""How a run is told: its lifecycle events, its one-line error summary, its structured
log line and its outcome metrics."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from cml_jobs import _telemetry
from cml_jobs._descriptors import TaskDescriptor
from cml_jobs._events import REDACTED, EventHub, EventKind, TaskEvent, redact
from cml_jobs._registry import JobRegistry
from cml_jobs._timing import Clock
from cml_jobs._triggers import lateness
from cml_jobs.stores._base import Outcome, Run
from cml_jobs.stores._ops import RunRecord

__all__ = ["EVENT_OF", "RunReporter", "log_outcome", "redact_text", "summary"]

#: One line per run outcome; ``record.cml_jobs`` holds the same fields as a dict.
logger = logging.getLogger("cml_jobs.runs")

#: The event that tells each outcome.
EVENT_OF = {
    Outcome.SUCCEEDED: EventKind.SUCCEEDED,
    Outcome.FAILED: EventKind.FAILED,
    Outcome.TIMED_OUT: EventKind.TIMED_OUT,
    Outcome.MISSED: EventKind.MISSED,
    Outcome.SKIPPED: EventKind.SKIPPED,
    Outcome.STOPPED: EventKind.STOPPED,
    Outcome.CANCELLED: EventKind.CANCELLED,
    Outcome.PARKED: EventKind.PARKED,
}

_MESSAGE = (
    "task=%s job=%s occurrence=%s attempt=%d duration=%.3fs lateness=%s outcome=%s worker=%s "
    "data=%s"
)


def summary(error: BaseException | None) -> str | None:
    """A one-line summary of what went wrong, or None."""
    if error is None:
        return None
    if isinstance(error, asyncio.TimeoutError):
        return "timed out"
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}"[:500] if text else type(error).__name__


def redact_text(text: str | None, data: Mapping[str, Any], shown: Mapping[str, Any]) -> str | None:
    """``text`` with every hidden value of ``data`` (those ``shown`` replaced by
    ``REDACTED``) replaced too, longest first, so that an error message that quotes a
    redacted value does not leak it."""
    if text is None:
        return None
    hidden = {str(data[key]) for key, value in shown.items() if value == REDACTED}
    for value in sorted((v for v in hidden if len(v) >= 2), key=len, reverse=True):
        text = text.replace(value, REDACTED)
    return text


def log_outcome(
    row: RunRecord, job_name: str, error: BaseException | None, data: dict[str, Any]
) -> None:
    """Log how a run ended, one line (INFO; failures at ERROR with their traceback, missed
    runs at WARNING)."""
    outcome = row.outcome
    level = logging.INFO
    if outcome in (Outcome.FAILED, Outcome.TIMED_OUT):
        level = logging.ERROR
    elif outcome is Outcome.MISSED:
        level = logging.WARNING
    if not logger.isEnabledFor(level):  # formatting costs more than a run of a small job
        return
    late = row.lateness.total_seconds() if row.lateness is not None else None
    fields = {
        "task_id": row.task_id,
        "job": job_name,
        "occurrence_at": row.occurrence_at.isoformat(),
        "attempt": row.attempt,
        "duration": row.duration.total_seconds() if row.duration is not None else 0.0,
        "lateness": late,
        "outcome": outcome.value,
        "worker": row.worker,
        "data": data,
    }
    args = [*fields.values()]
    args[5] = "-" if late is None else f"{late:.3f}s"
    args[-1] = json.dumps(data, default=str, sort_keys=True)
    exc_info = error if outcome is Outcome.FAILED else None
    logger.log(level, _MESSAGE, *args, exc_info=exc_info, extra={"cml_jobs": fields})


class RunReporter:
    """Counts, logs and announces what happens to runs.

    Args:
        registry: the job classes, which say whether a task's data is shown.
        clock: the time each event is stamped with.
        hub: where lifecycle events go.
        worker: this worker's id, for history rows and log lines.
    """

    def __init__(
        self, *, registry: JobRegistry, clock: Clock, hub: EventHub, worker: str = ""
    ) -> None:
        self.registry, self.clock, self.hub, self.worker = registry, clock, hub, worker

    def data(self, descriptor: TaskDescriptor) -> dict[str, Any]:
        """The task's data as logs and events show it (see ``BackgroundJob.redact_data``)."""
        job = self.registry.get(descriptor.name)
        return redact(descriptor.data, getattr(job, "redact_data", False))

    def emit(
        self,
        kind: EventKind,
        run: Run,
        job_name: str,
        *,
        attempt: int | None = None,
        duration: timedelta | None = None,
        error: BaseException | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        """Announce one lifecycle event of a run (its attempt defaults to the run's)."""
        event = TaskEvent(
            kind,
            run.task_id,
            job_name,
            self.clock.now(),
            run.occurrence_at,
            attempt=attempt or run.attempt,
            duration=duration,
            error=summary(error),
            data=data,
        )
        self.hub.emit(event)

    def row(
        self,
        run: Run,
        descriptor: TaskDescriptor,
        outcome: Outcome,
        error: BaseException | None,
        started_at: datetime | None,
        attempt: int | None = None,
    ) -> RunRecord:
        """The run's history row (``attempt`` defaults to the run's), its error redacted as
        the job asks."""
        now = self.clock.now()
        failed = outcome in (Outcome.FAILED, Outcome.TIMED_OUT) and error is not None
        data, shown = descriptor.data, self.data(descriptor)
        return RunRecord(
            task_id=run.task_id,
            occurrence_at=run.occurrence_at,
            outcome=outcome,
            ended_at=now,
            started_at=started_at,
            attempt=attempt or run.attempt,
            worker=self.worker,
            lateness=lateness(descriptor, run.occurrence_at, started_at or now),
            duration=None if started_at is None else now - started_at,
            error_type=type(error).__qualname__ if failed else None,
            error_message=redact_text(summary(error), data, shown) if failed else None,
        )

    def outcome(
        self, run: Run, descriptor: TaskDescriptor, row: RunRecord, error: BaseException | None
    ) -> None:
        """Count, log and announce how a run ended, as its history ``row`` says."""
        _telemetry.record_outcome(
            descriptor.name, row.outcome, duration=row.duration, error_type=row.error_type
        )
        data = self.data(descriptor)
        log_outcome(row, descriptor.name, error, data)
        self.emit(
            EVENT_OF[row.outcome],
            run,
            descriptor.name,
            attempt=row.attempt,
            duration=row.duration,
            error=error,
            data=data,
        )
