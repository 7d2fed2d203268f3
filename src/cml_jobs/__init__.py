"""cml-jobs: typed background jobs for asyncio apps.

Recurrent, cron and one-time tasks, described by JSON descriptors, stored in a pluggable
store (in memory, or Redis shared by many workers), and run by ARQ workers that rebuild
each job's resources from a dependency-injector container on every run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cml_jobs._bulk import BulkScheduleResult
from cml_jobs._bus import BackgroundTasksBus, TaskInfo
from cml_jobs._config import Settings
from cml_jobs._descriptors import (
    MAX_DESCRIPTOR_BYTES,
    CronTaskDescriptor,
    RecurrentTaskDescriptor,
    ScheduledTaskDescriptor,
    TaskDescriptor,
)
from cml_jobs._events import EventKind, TaskEvent
from cml_jobs._jobs import (
    BackgroundJob,
    RecurrentBackgroundJob,
    RunContext,
    ScheduledBackgroundJob,
    StopRecurrence,
)
from cml_jobs._registry import JobRegistry, backgroundjob
from cml_jobs._scheduler import BackgroundTaskScheduler
from cml_jobs._timing import Clock, SystemClock
from cml_jobs.exceptions import (
    CmlJobsError,
    ConfigurationError,
    DuplicateJobError,
    InvalidDescriptorError,
    InvalidTaskDataError,
    InvalidTriggerError,
    PayloadTooLargeError,
    ServiceNotFoundError,
    StoreAccessError,
    StoreError,
    StoreUnavailableError,
    TaskExistsError,
    TaskNotFoundError,
    TaskParkedError,
    TasksRefusedError,
    UnknownJobError,
)
from cml_jobs.stores import Outcome, RunRecord, WorkerInfo

if TYPE_CHECKING:
    from cml_jobs._di import ServiceProvider

    WorkerSettings: type
    """The arq settings of a worker configured from ``CML_JOBS_*`` environment variables:
    ``arq cml_jobs.WorkerSettings``."""

__version__ = "0.1.0"

__all__ = [
    "MAX_DESCRIPTOR_BYTES",
    "BackgroundJob",
    "BackgroundTaskScheduler",
    "BackgroundTasksBus",
    "BulkScheduleResult",
    "Clock",
    "CmlJobsError",
    "ConfigurationError",
    "CronTaskDescriptor",
    "DuplicateJobError",
    "EventKind",
    "InvalidDescriptorError",
    "InvalidTaskDataError",
    "InvalidTriggerError",
    "JobRegistry",
    "Outcome",
    "PayloadTooLargeError",
    "RecurrentBackgroundJob",
    "RecurrentTaskDescriptor",
    "RunContext",
    "RunRecord",
    "ScheduledBackgroundJob",
    "ScheduledTaskDescriptor",
    "ServiceNotFoundError",
    "ServiceProvider",
    "Settings",
    "StopRecurrence",
    "StoreAccessError",
    "StoreError",
    "StoreUnavailableError",
    "SystemClock",
    "TaskDescriptor",
    "TaskEvent",
    "TaskExistsError",
    "TaskInfo",
    "TaskNotFoundError",
    "TaskParkedError",
    "TasksRefusedError",
    "UnknownJobError",
    "WorkerInfo",
    "WorkerSettings",
    "backgroundjob",
    "worker_settings",
]


def __getattr__(name: str) -> Any:
    # Built on first use, so that importing cml_jobs reads no environment and imports
    # no arq: `arq cml_jobs.WorkerSettings` reads CML_JOBS_* when the worker starts.
    if name == "WorkerSettings":
        from cml_jobs.worker import worker_settings

        settings = worker_settings()
        globals()["WorkerSettings"] = settings
        return settings
    if name == "worker_settings":
        from cml_jobs.worker import worker_settings as build

        return build
    if name == "ServiceProvider":
        # dependency-injector (and what it pulls in) loads only for apps that use it.
        from cml_jobs._di import ServiceProvider

        return ServiceProvider
    raise AttributeError(f"module 'cml_jobs' has no attribute {name!r}")
