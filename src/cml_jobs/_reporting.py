"""How a run is told: its lifecycle events, its one-line error summary, its structured
log line and its outcome metrics."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import timedelta
from typing import Any

from cml_jobs import _telemetry
from cml_jobs._descriptors import TaskDescriptor
from cml_jobs._events import EventHub, EventKind, TaskEvent, redact
from cml_jobs._registry import JobRegistry
from cml_jobs._timing import Clock
from cml_jobs._triggers import lateness
from cml_jobs.stores._base import Outcome, Run

__all__ = ["EVENT_OF", "RunReporter", "log_outcome", "summary"]

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

_MESSAGE = "task=%s job=%s occurrence=%s attempt=%d duration=%.3fs outcome=%s data=%s"


def summary(error: BaseException | None) -> str | None:
    """A one-line summary of what went wrong, or None."""
    if error is None:
        return None
    if isinstance(error, asyncio.TimeoutError):
        return "timed out"
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}"[:500] if text else type(error).__name__


def log_outcome(
    run: Run,
    job_name: str,
    outcome: Outcome,
    error: BaseException | None,
    *,
    attempt: int,
    duration: timedelta | None,
    late_by: timedelta | None,
    data: dict[str, Any],
) -> None:
    """Log how a run ended: failures at ERROR with their traceback, late ones at WARNING."""
    level = logging.INFO
    if outcome in (Outcome.FAILED, Outcome.TIMED_OUT):
        level = logging.ERROR
    elif late_by is not None:
        level = logging.WARNING
    if not logger.isEnabledFor(level):  # formatting costs more than a run of a small job
        return
    seconds = duration.total_seconds() if duration is not None else 0.0
    fields = {
        "task_id": run.task_id,
        "job": job_name,
        "occurrence_at": run.occurrence_at.isoformat(),
        "attempt": attempt,
        "duration": seconds,
        "outcome": outcome.value,
        "data": data,
    }
    message, args = _MESSAGE, [*fields.values()]
    args[-1] = json.dumps(data, default=str, sort_keys=True)
    if late_by is not None:
        message, args = message + " late_by=%.3fs", [*args, late_by.total_seconds()]
    exc_info = error if outcome is Outcome.FAILED else None
    logger.log(level, message, *args, exc_info=exc_info, extra={"cml_jobs": fields})


class RunReporter:
    """Counts, logs and announces what happens to runs.

    Args:
        registry: the job classes, which say whether a task's data is shown.
        clock: the time each event is stamped with.
        hub: where lifecycle events go.
    """

    def __init__(self, *, registry: JobRegistry, clock: Clock, hub: EventHub) -> None:
        self.registry, self.clock, self.hub = registry, clock, hub

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

    def outcome(
        self,
        run: Run,
        descriptor: TaskDescriptor,
        outcome: Outcome,
        error: BaseException | None,
        attempt: int,
        duration: timedelta | None,
        *,
        failed: bool,
    ) -> None:
        """Count, log and announce how a run ended."""
        error_type = type(error).__qualname__ if failed else None
        _telemetry.record_outcome(
            descriptor.name, outcome, duration=duration, error_type=error_type
        )
        late_by = None
        if outcome is Outcome.MISSED:
            late_by = lateness(descriptor, run.occurrence_at, self.clock.now())
        data = self.data(descriptor)
        log_outcome(
            run,
            descriptor.name,
            outcome,
            error,
            attempt=attempt,
            duration=duration,
            late_by=late_by,
            data=data,
        )
        self.emit(
            EVENT_OF[outcome],
            run,
            descriptor.name,
            attempt=attempt,
            duration=duration,
            error=error,
            data=data,
        )
