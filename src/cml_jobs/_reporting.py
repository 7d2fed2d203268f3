"""How a run's end is told: its one-line error summary and its structured log line."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import timedelta
from typing import Any

from cml_jobs.stores._base import Outcome, Run

__all__ = ["log_outcome", "summary"]

#: One line per run outcome; ``record.cml_jobs`` holds the same fields as a dict.
logger = logging.getLogger("cml_jobs.runs")

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
