"""A task's next occurrences and recorded runs, as JSON-ready values for ``show``."""

from __future__ import annotations

from typing import Any

from cml_jobs._scheduler import BackgroundTaskScheduler
from cml_jobs._views import iso, run_json
from cml_jobs.exceptions import ConfigurationError

__all__ = ["history_section", "upcoming_section"]


async def upcoming_section(
    scheduler: BackgroundTaskScheduler, task_id: str, count: int
) -> list[str]:
    """The task's next ``count`` occurrences, ISO 8601 (none when paused, parked or ended)."""
    return [iso(at) or "" for at in await scheduler.bus.upcoming(task_id, count)]


async def history_section(
    scheduler: BackgroundTaskScheduler, task_id: str, limit: int
) -> list[dict[str, Any]] | None:
    """The task's latest ``limit`` runs, newest first; None when its store keeps no
    history."""
    if limit == 0:
        return []
    try:
        return [run_json(run) for run in await scheduler.bus.get_history(task_id, limit)]
    except ConfigurationError:
        return None
