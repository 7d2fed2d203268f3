"""The jobs of ``python -m cml_jobs demo``: one of each kind, doing visible, harmless work."""

from __future__ import annotations

from cml_jobs._jobs import RecurrentBackgroundJob, ScheduledBackgroundJob
from cml_jobs._registry import backgroundjob


@backgroundjob(task_type="recurrent")
class HeartbeatJob(RecurrentBackgroundJob):
    """Counts its beats; runs on an interval."""

    def __init__(self, service: str) -> None:
        self.service = service

    async def run_every(self, *args: object, **kwargs: object) -> None:
        """Nothing to do but be on time."""


@backgroundjob(task_type="recurrent")
class CleanupJob(RecurrentBackgroundJob):
    """Pretends to clean a folder; runs on a cron expression."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    async def run_every(self, *args: object, **kwargs: object) -> None:
        """Nothing to clean in a demo."""


@backgroundjob(task_type="scheduled")
class ReportJob(ScheduledBackgroundJob):
    """Pretends to send a report; runs once."""

    def __init__(self, recipient: str) -> None:
        self.recipient = recipient

    async def run_at(self, *args: object, **kwargs: object) -> None:
        """Nothing to send in a demo."""
