"""cml-jobs benchmark jobs: no-op bodies that only record (task, occurrence, start)."""

from __future__ import annotations

from typing import Any

from benchmarks.recorder import now_ms, record
from cml_jobs import RecurrentBackgroundJob, ScheduledBackgroundJob, backgroundjob


@backgroundjob(task_type="scheduled")
class BenchOnceJob(ScheduledBackgroundJob):
    """A one-time no-op."""

    async def run_at(self, *args: Any, **kwargs: Any) -> None:
        start = now_ms()
        context = self.context
        record(context.task_id, round(context.occurrence_at.timestamp() * 1000), start)


@backgroundjob(task_type="recurrent")
class BenchEveryJob(RecurrentBackgroundJob):
    """A recurrent no-op."""

    async def run_every(self, *args: Any, **kwargs: Any) -> None:
        start = now_ms()
        context = self.context
        record(context.task_id, round(context.occurrence_at.timestamp() * 1000), start)
