"""Job base classes: what users subclass, and the signal that ends a recurrence."""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Literal

if TYPE_CHECKING:
    from cml_jobs._di import ServiceProvider

__all__ = [
    "BackgroundJob",
    "RecurrentBackgroundJob",
    "RunContext",
    "ScheduledBackgroundJob",
    "StopRecurrence",
    "TaskType",
]

TaskType = Literal["recurrent", "scheduled"]


class StopRecurrence(Exception):
    """Raise from ``run_every`` to end the task cleanly: no more occurrences are scheduled.

    The run is recorded as ``stopped``, not as a failure.
    """

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class RunContext:
    """What cml-jobs tells a job about the run it is in.

    Attributes:
        task_id: the task's id.
        job_name: the registered job name.
        occurrence_at: the intended time of this occurrence (aware UTC).
        attempt: 1 for the first attempt; retries and re-runs after a lost worker count up.
    """

    task_id: str
    job_name: str
    occurrence_at: datetime
    attempt: int


class BackgroundJob:
    """The base of all jobs. Subclass ``RecurrentBackgroundJob`` or ``ScheduledBackgroundJob``.

    A job's constructor takes the task's ``data`` (IDs and configuration) as keyword
    arguments. Its resources come from ``configure``, which cml-jobs calls on every run,
    before the job body.
    """

    task_type: ClassVar[TaskType]
    #: Hide ``data`` in logs and events: True for every value, or a set of keys whose
    #: values are hidden. Secrets still never belong in ``data``.
    redact_data: ClassVar[bool | frozenset[str]] = False
    #: Set by cml-jobs before ``configure`` is called.
    context: RunContext

    def configure(
        self, service_provider: ServiceProvider | None = None, **kwargs: Any
    ) -> Awaitable[None] | None:
        """Take what the job needs from the container. May be sync or ``async``.

        Args:
            service_provider: the dependency-injector container, wrapped so that
                ``get_required_service(Type)`` resolves a provider by type; None when the
                scheduler has no container.
            **kwargs: reserved for future use.
        """
        return None


class RecurrentBackgroundJob(BackgroundJob):
    """A job that runs on every occurrence of a recurrent or cron task."""

    task_type: ClassVar[TaskType] = "recurrent"

    async def run_every(self, *args: Any, **kwargs: Any) -> None:
        """The work done on each occurrence. Raise ``StopRecurrence`` to end the task."""
        raise NotImplementedError(f"{type(self).__name__} must implement run_every()")


class ScheduledBackgroundJob(BackgroundJob):
    """A job that runs once, at a task's ``scheduled_at``."""

    task_type: ClassVar[TaskType] = "scheduled"

    async def run_at(self, *args: Any, **kwargs: Any) -> None:
        """The work done at the scheduled time."""
        raise NotImplementedError(f"{type(self).__name__} must implement run_at()")
