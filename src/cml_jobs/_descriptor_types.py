"""The types of descriptor fields, and what each descriptor's constructor takes.

The constructor arguments are written for type checkers that know nothing of pydantic
(plain mypy, pyright), as users run them: durations accept seconds as numbers there, and
are always ``timedelta`` once read from a descriptor. Each descriptor's ``__init__`` is
typed with one of these TypedDicts; a test keeps them equal to the models' fields.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Annotated, TypedDict

from pydantic import AfterValidator, AwareDatetime, JsonValue, PlainSerializer

__all__ = [
    "CronArgs",
    "JsonData",
    "RecurrentArgs",
    "ScheduledArgs",
    "Seconds",
    "UtcDatetime",
]


def _to_utc(value: datetime) -> datetime:
    # Stores keep milliseconds; so do descriptors, so that both agree on every occurrence.
    try:
        value = value.astimezone(timezone.utc)
    except OverflowError as exc:  # 9999-12-31T23:00-05:00; a ValueError is a field error
        raise ValueError(f"{value.isoformat()!r} is out of range once converted to UTC") from exc
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def _finite_json(value: JsonValue) -> JsonValue:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{value!r} is not a JSON number")
    if isinstance(value, list):
        for item in value:
            _finite_json(item)
    elif isinstance(value, dict):
        for item in value.values():
            _finite_json(item)
    return value


Seconds = Annotated[
    timedelta,
    PlainSerializer(lambda td: td.total_seconds(), return_type=float, when_used="json"),
]
UtcDatetime = Annotated[AwareDatetime, AfterValidator(_to_utc)]
JsonData = Annotated[dict[str, JsonValue], AfterValidator(_finite_json)]


class RequiredArgs(TypedDict):
    id: str
    name: str


class CommonArgs(RequiredArgs, total=False):
    data: Mapping[str, object]  # JSON values; checked when the descriptor is built
    start_at: datetime | None
    misfire_grace_time: timedelta | float | None
    coalesce: bool
    max_instances: int
    jitter: timedelta | float
    timeout: timedelta | float | None
    max_retries: int
    retry_backoff: timedelta | float


class RecurringArgs(CommonArgs, total=False):
    end_at: datetime | None


class RecurrentArgs(RecurringArgs):
    interval: timedelta | float


class ScheduledArgs(CommonArgs):
    scheduled_at: datetime


class CronRequiredArgs(RecurringArgs):
    cron: str


class CronArgs(CronRequiredArgs, total=False):
    timezone: str
