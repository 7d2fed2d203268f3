"""How tasks and events are shown to people and scripts: the ``cml-jobs`` command and the
web dashboard read the same words, states and JSON from here.

Pure functions over ``TaskInfo`` and ``TaskEvent``: no I/O, and ``now`` is given.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from cml_jobs._bus import TaskInfo
from cml_jobs._descriptors import (
    CronTaskDescriptor,
    RecurrentTaskDescriptor,
    ScheduledTaskDescriptor,
)
from cml_jobs._events import TaskEvent
from cml_jobs.stores import RunRecord, WorkerInfo

__all__ = [
    "STATES",
    "ago",
    "event_json",
    "event_line",
    "filter_tasks",
    "iso",
    "run_json",
    "task_json",
    "task_state",
    "trigger_text",
    "worker_json",
]

#: What a task is doing, as filters and columns name it.
STATES = ("scheduled", "paused", "parked", "running", "ended", "idle")

#: Short names of the outcomes, for a counts column that fits a terminal.
_SHORT = {"succeeded": "ok", "failed": "failed", "timed_out": "timeout", "missed": "missed"}


def task_state(task: TaskInfo) -> str:
    """Ended (kept for its history), else parked, else paused, else running, else
    scheduled (it has a next occurrence), else idle (its last run is being recorded)."""
    if task.ended_at is not None:
        return "ended"
    if task.parked_reason is not None:
        return "parked"
    if task.paused:
        return "paused"
    if task.running:
        return "running"
    return "scheduled" if task.next_run_time is not None else "idle"


def trigger_text(task: TaskInfo) -> str:
    """The trigger in a few words: ``every 5m``, ``cron */5 * * * * (UTC)``, ``once at ...``."""
    descriptor = task.descriptor
    if isinstance(descriptor, RecurrentTaskDescriptor):
        return f"every {duration_text(descriptor.interval)}"
    if isinstance(descriptor, CronTaskDescriptor):
        return f"cron {descriptor.cron} ({descriptor.timezone})"
    if isinstance(descriptor, ScheduledTaskDescriptor):
        return f"once at {iso(descriptor.scheduled_at)}"
    return "unreadable descriptor"


def duration_text(span: timedelta) -> str:
    """``90s`` -> ``1m30s``; ``3600s`` -> ``1h``; under a second, in ms (a tenth of a ms
    under 10 ms)."""
    seconds = span.total_seconds()
    if seconds < 1:
        return f"{seconds * 1000:.1f}ms" if seconds < 0.01 else f"{seconds * 1000:.0f}ms"
    whole = round(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        amount, whole = divmod(whole, size)
        if amount:
            parts.append(f"{amount}{unit}")
    return "".join(parts)


def counts_text(counts: dict[str, int]) -> str:
    """``ok 12 failed 1``: the outcomes a task has had, most common first."""
    shown = sorted(((n, name) for name, n in counts.items() if n), reverse=True)
    return " ".join(f"{_SHORT.get(name, name)} {n}" for n, name in shown) or "-"


def iso(at: datetime | None) -> str | None:
    """An ISO 8601 time, or None."""
    return at.isoformat() if at is not None else None


def ago(at: datetime | None, now: datetime) -> str:
    """``in 4s`` / ``12s ago`` / ``-``: a time relative to ``now``."""
    if at is None:
        return "-"
    delta = at - now
    if delta >= timedelta(0):
        return f"in {duration_text(delta)}" if delta >= timedelta(seconds=1) else "now"
    return f"{duration_text(-delta)} ago"


def filter_tasks(
    tasks: Iterable[TaskInfo],
    *,
    states: Sequence[str] = (),
    job: str | None = None,
    search: str | None = None,
) -> list[TaskInfo]:
    """The tasks in any of ``states`` (all when empty), of job ``job``, whose id or job
    name contains ``search`` (case-insensitive)."""
    needle = search.lower() if search else None
    return [
        task
        for task in tasks
        if (not states or task_state(task) in states)
        and (job is None or task.name == job)
        and (needle is None or needle in task.id.lower() or needle in task.name.lower())
    ]


def task_json(task: TaskInfo) -> dict[str, Any]:
    """A task as JSON: what ``TaskInfo`` holds, times as ISO 8601, plus its state and
    trigger text."""
    descriptor = task.descriptor
    return {
        "id": task.id,
        "job": task.name,
        "state": task_state(task),
        "trigger": trigger_text(task),
        "next_run_time": iso(task.next_run_time),
        "last_run_time": iso(task.last_run_time),
        "last_outcome": task.last_outcome.value if task.last_outcome else None,
        "last_error": task.last_error,
        "paused": task.paused,
        "parked_reason": task.parked_reason,
        "note": task.note,
        "ended_at": iso(task.ended_at),
        "running": task.running,
        "counts": dict(task.counts),
        "descriptor": descriptor.model_dump(mode="json") if descriptor else None,
    }


def run_json(run: RunRecord) -> dict[str, Any]:
    """A history row as JSON: times ISO 8601, lateness and duration in seconds."""
    return {
        "occurrence_at": iso(run.occurrence_at),
        "outcome": run.outcome.value,
        "started_at": iso(run.started_at),
        "ended_at": iso(run.ended_at),
        "attempt": run.attempt,
        "worker": run.worker,
        "lateness": run.lateness.total_seconds() if run.lateness is not None else None,
        "duration": run.duration.total_seconds() if run.duration is not None else None,
        "error_type": run.error_type,
        "error": run.error_message,
    }


def worker_json(worker: WorkerInfo) -> dict[str, Any]:
    """A live worker as JSON."""
    return {
        "id": worker.id,
        "host": worker.host,
        "pid": worker.pid,
        "version": worker.version,
        "started_at": iso(worker.started_at),
        "heartbeat_at": iso(worker.heartbeat_at),
        "expires_at": iso(worker.expires_at),
        "running": worker.running,
        "max_jobs": worker.max_jobs,
    }


def event_json(event: TaskEvent, position: str | None = None) -> dict[str, Any]:
    """An event as JSON (``TaskEvent.to_json``'s fields), with its stream position."""
    import json

    fields: dict[str, Any] = json.loads(event.to_json())
    return {"id": position, **fields} if position is not None else fields


def event_line(event: TaskEvent) -> str:
    """One line for a terminal: time, what happened, the task, and the details."""
    details = []
    if event.occurrence_at is not None:
        details.append(f"occurrence {event.occurrence_at:%H:%M:%S}")
    if event.attempt is not None and event.attempt > 1:
        details.append(f"attempt {event.attempt}")
    if event.duration is not None:
        details.append(f"took {duration_text(event.duration)}")
    if event.count > 1:
        details.append(f"x{event.count}")
    if event.error:
        details.append(f"error: {event.error}")
    job = f" ({event.job_name})" if event.job_name else ""
    return (
        f"{event.at:%Y-%m-%d %H:%M:%S}  {event.kind.value:<11} {event.task_id}{job}  "
        + "  ".join(details)
    ).rstrip()
