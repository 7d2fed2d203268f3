"""Task descriptors: what a task is, written down as JSON.

A descriptor holds only IDs and configuration (``data``) plus its trigger and run
policy. Resources are never stored: the job gets them from the container on every run.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, TypeAlias
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from cml_jobs._descriptor_types import JsonData, Seconds, UtcDatetime
from cml_jobs.exceptions import (
    InvalidDescriptorError,
    InvalidTaskDataError,
    InvalidTriggerError,
)

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from cml_jobs._descriptor_types import CronArgs, RecurrentArgs, ScheduledArgs

__all__ = [
    "MAX_DESCRIPTOR_BYTES",
    "CronTaskDescriptor",
    "RecurrentTaskDescriptor",
    "ScheduledTaskDescriptor",
    "TaskDescriptor",
    "parse_descriptor",
]

#: The largest descriptor, as JSON, that cml-jobs accepts. Descriptors carry IDs and
#: configuration; anything bigger belongs in the app's own storage, referenced by ID.
MAX_DESCRIPTOR_BYTES = 64 * 1024

_TASK_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@/+=-]{0,199}$")


_TRIGGER_FIELDS = frozenset(
    {"interval", "cron", "timezone", "scheduled_at", "start_at", "end_at", "jitter"}
)


class _Descriptor(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: ClassVar[str]

    id: str = Field(description="Unique task id, e.g. 'metrics-worker-456'.")
    name: str = Field(min_length=1, description="The registered name of the job to run.")
    data: JsonData = Field(
        default_factory=dict, description="The job's constructor arguments: IDs and configuration."
    )
    start_at: UtcDatetime | None = Field(
        default=None, description="Do not run before this time (aware datetime)."
    )
    misfire_grace_time: Seconds | None = Field(
        default=timedelta(seconds=60),
        description="How late an occurrence may still run; later ones are recorded as missed. "
        "None runs every late occurrence.",
    )
    coalesce: bool = Field(
        default=True, description="Several missed occurrences become one catch-up run."
    )
    max_instances: int = Field(default=1, ge=1, description="Runs of this task allowed at once.")
    jitter: Seconds = Field(
        default=timedelta(0), description="Up to this much random delay per occurrence."
    )
    timeout: Seconds | None = Field(
        default=None, description="A run taking longer is cancelled and recorded as timed out."
    )
    max_retries: int = Field(default=0, ge=0, le=100, description="Retries after a failed run.")
    retry_backoff: Seconds = Field(
        default=timedelta(seconds=1),
        description="Delay before the first retry; doubles on each further retry.",
    )

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise _descriptor_error(type(self).__name__, exc) from exc

    @field_validator("id")
    @classmethod
    def _check_id(cls, value: str) -> str:
        if not _TASK_ID.match(value):
            raise ValueError(
                "a task id is 1-200 characters of letters, digits and _.:@/+=- "
                "starting with a letter or digit"
            )
        return value

    @field_validator("misfire_grace_time", "timeout")
    @classmethod
    def _positive_or_none(cls, value: timedelta | None) -> timedelta | None:
        if value is not None and value <= timedelta(0):
            raise ValueError(f"must be positive (got {value.total_seconds()!r} s) or None")
        return value

    @field_validator("jitter", "retry_backoff")
    @classmethod
    def _not_negative(cls, value: timedelta) -> timedelta:
        if value < timedelta(0):
            raise ValueError(f"must not be negative (got {value.total_seconds()!r} s)")
        return value


class _Recurring(_Descriptor):
    end_at: UtcDatetime | None = Field(
        default=None,
        description="No occurrence after this time (aware datetime); the task then ends.",
    )

    @field_validator("end_at")
    @classmethod
    def _end_after_start(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        start = info.data.get("start_at")
        if value is not None and start is not None and value < start:
            raise ValueError(
                f"end_at is before start_at ({start.isoformat()!r}): the task would never run"
            )
        return value


class RecurrentTaskDescriptor(_Recurring):
    """A task that runs every ``interval``, on the grid ``start_at + k * interval``.

    Without ``start_at`` the first occurrence is one interval after scheduling. The
    interval is a whole number of milliseconds, the precision at which stores keep times.
    With ``end_at``, no occurrence comes after it, and the task ends after its last run.

    Example:
        ``RecurrentTaskDescriptor(id="metrics-w1", name="WorkerMetricsCollectionJob",
        data={"worker_id": "w1"}, interval=300)``
    """

    kind: Literal["recurrent"] = "recurrent"  # type: ignore[misc]
    interval: Seconds = Field(description="Time between occurrences (timedelta or seconds).")

    if TYPE_CHECKING:

        def __init__(self, **values: Unpack[RecurrentArgs]) -> None: ...

    @field_validator("interval")
    @classmethod
    def _positive_interval(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError(f"must be positive (got {value.total_seconds()!r} s)")
        if value < timedelta(milliseconds=1):
            raise ValueError(f"must be at least 1 ms (got {value.total_seconds()!r} s)")
        if value.microseconds % 1000:
            nearest = timedelta(milliseconds=round(value / timedelta(milliseconds=1)))
            raise ValueError(
                f"must be a whole number of milliseconds (got {value.total_seconds()!r} s), "
                "the precision at which occurrences are stored; use "
                f"{nearest.total_seconds()!r} s (timedelta(milliseconds="
                f"{nearest // timedelta(milliseconds=1)}))"
            )
        return value


class ScheduledTaskDescriptor(_Descriptor):
    """A task that runs once, at ``scheduled_at``; it ends after its run."""

    kind: Literal["scheduled"] = "scheduled"  # type: ignore[misc]
    scheduled_at: UtcDatetime = Field(description="When to run (aware datetime).")

    if TYPE_CHECKING:

        def __init__(self, **values: Unpack[ScheduledArgs]) -> None: ...


class CronTaskDescriptor(_Recurring):
    """A task on a cron expression, evaluated in ``timezone``.

    Standard 5-field expressions (minute hour day month weekday); a 6-field expression
    starts with a seconds field (``"*/10 * * * * *"``: every 10 seconds).

    Daylight-saving changes follow cron's rules: an expression whose minute or hour
    field starts with ``*`` follows the wall clock (a skipped time does not happen, a
    repeated one happens twice); other expressions name fixed times, which run at the
    first minute after a gap and once in a repeated hour. There is no year field: bound
    the years with ``start_at`` and ``end_at``, after which the task ends.
    """

    kind: Literal["cron"] = "cron"  # type: ignore[misc]
    cron: str = Field(description="A cron expression, e.g. '*/5 * * * *'.")
    timezone: str = Field(default="UTC", description="An IANA timezone name, e.g. 'Europe/Paris'.")

    if TYPE_CHECKING:

        def __init__(self, **values: Unpack[CronArgs]) -> None: ...

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        from cml_jobs._triggers import check_cron

        check_cron(value)
        return value

    @field_validator("timezone")
    @classmethod
    def _valid_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown timezone {value!r}; use an IANA name like 'UTC'") from exc
        return value


TaskDescriptor: TypeAlias = Annotated[
    RecurrentTaskDescriptor | ScheduledTaskDescriptor | CronTaskDescriptor,
    Field(discriminator="kind"),
]
"""Any of the three descriptor kinds, told apart by their ``kind`` field."""

_ADAPTER: TypeAdapter[TaskDescriptor] = TypeAdapter(TaskDescriptor)


def parse_descriptor(raw: str | bytes) -> TaskDescriptor:
    """Validate a stored descriptor.

    Raises:
        InvalidDescriptorError: the JSON is malformed or does not describe a valid task.
    """
    try:
        return _ADAPTER.validate_json(raw)
    except ValidationError as exc:
        raise _descriptor_error("TaskDescriptor", exc) from exc


def encode_descriptor(descriptor: TaskDescriptor) -> str:
    """The descriptor as compact JSON, the only form in which it is stored.

    Fields left at their defaults are left out (most tasks store a fifth of the text);
    ``kind``, which tells the descriptor types apart, is always written.
    """
    fields = descriptor.model_dump(mode="json", exclude_defaults=True)
    return json.dumps({"kind": descriptor.kind, **fields}, separators=(",", ":"))


def _descriptor_error(model: str, exc: ValidationError) -> InvalidDescriptorError:
    problems = []
    fields: set[str] = set()
    for error in exc.errors(include_url=False):
        where = ".".join(str(part) for part in error["loc"]) or "descriptor"
        fields.add(str(error["loc"][0]) if error["loc"] else "")
        shown = "" if error["type"] == "missing" else f" (got {error.get('input')!r:.80})"
        problems.append(f"{where}: {error['msg']}{shown}")
    message = f"invalid {model}: " + "; ".join(problems)
    if fields & _TRIGGER_FIELDS:
        return InvalidTriggerError(message)
    if fields == {"data"}:
        return InvalidTaskDataError(
            message + "; data holds only JSON values: IDs and configuration"
        )
    return InvalidDescriptorError(message)
