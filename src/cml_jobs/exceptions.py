"""The errors cml-jobs raises.

Our exception hierarchy::

    CmlJobsError
    ├── ConfigurationError ........... you used it wrong
    │   ├── UnknownJobError .......... (also LookupError) no job registered under that name
    │   ├── DuplicateJobError ........ two classes registered under one name
    │   ├── InvalidDescriptorError ... (also ValueError) a descriptor that cannot be scheduled
    │   │   ├── InvalidTriggerError .. bad interval, cron expression, timezone or date
    │   │   ├── InvalidTaskDataError . data that does not fit the job's constructor, or is not JSON
    │   │   └── PayloadTooLargeError . a descriptor above the size limit
    │   ├── TaskExistsError .......... a task with that id exists and replace=False
    │   ├── TaskParkedError .......... the task is parked: unpark it before running it
    │   ├── TasksRefusedError ........ (also ValueError) schedule_tasks refused some descriptors
    │   └── ServiceNotFoundError ..... (also LookupError) get_required_service found no provider,
    │                                  or several
    ├── TaskNotFoundError ............ (also LookupError) no task with that id
    └── StoreError ................... the world failed
        ├── StoreUnavailableError .... the store (Redis) cannot be reached
        └── StoreAccessError ......... the store refused the credentials or the permissions

Every message names the bad value and says what to do about it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cml_jobs._bulk import BulkScheduleResult

__all__ = [
    "CmlJobsError",
    "ConfigurationError",
    "DuplicateJobError",
    "InvalidDescriptorError",
    "InvalidTaskDataError",
    "InvalidTriggerError",
    "PayloadTooLargeError",
    "ServiceNotFoundError",
    "StoreAccessError",
    "StoreError",
    "StoreUnavailableError",
    "TaskExistsError",
    "TaskNotFoundError",
    "TaskParkedError",
    "TasksRefusedError",
    "UnknownJobError",
]


class CmlJobsError(Exception):
    """The root of every error cml-jobs raises."""


class ConfigurationError(CmlJobsError):
    """cml-jobs was used in a way it does not support; the message says how to fix it."""


class UnknownJobError(ConfigurationError, LookupError):
    """No background job is registered under the requested name."""


class DuplicateJobError(ConfigurationError):
    """Two job classes were registered under one name."""


class InvalidDescriptorError(ConfigurationError, ValueError):
    """A task descriptor cannot be scheduled as it is."""


class InvalidTriggerError(InvalidDescriptorError):
    """A trigger (interval, cron expression, timezone or date) is not valid."""


class InvalidTaskDataError(InvalidDescriptorError):
    """A descriptor's ``data`` does not fit the job's constructor, or is not plain JSON."""


class PayloadTooLargeError(InvalidDescriptorError):
    """A descriptor is larger than the store accepts."""


class TaskExistsError(ConfigurationError):
    """A task with this id is already scheduled and ``replace=True`` was not given."""


class TaskParkedError(ConfigurationError):
    """The task is parked (its descriptor could not run); ``unpark_task`` it first."""


class TasksRefusedError(ConfigurationError, ValueError):
    """``schedule_tasks`` refused some descriptors; the batches that held them wrote nothing.

    Attributes:
        result: what was done with every descriptor: ``result.refused`` maps each refused
            id to its error, ``result.held_back`` lists the valid ids of those batches.
    """

    def __init__(self, message: str, result: BulkScheduleResult) -> None:
        super().__init__(message)
        self.result = result


class ServiceNotFoundError(ConfigurationError, LookupError):
    """``get_required_service`` found no provider for a type, or more than one."""


class TaskNotFoundError(CmlJobsError, LookupError):
    """No task with the requested id is scheduled."""


class StoreError(CmlJobsError):
    """The schedule store failed."""


class StoreUnavailableError(StoreError):
    """The schedule store cannot be reached."""


class StoreAccessError(StoreError):
    """The store refused the credentials (a wrong password) or the permissions (an ACL
    user without a command or a key) it was given; retrying cannot help."""
