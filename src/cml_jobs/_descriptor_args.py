"""What each task descriptor's constructor takes, written for type checkers that know
nothing of pydantic (plain mypy, pyright), as users run them.

Durations accept seconds as numbers here, and are always ``timedelta`` once read from a
descriptor. Each descriptor's ``__init__`` is typed with one of these; a test keeps them
equal to the models' fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import TypedDict

__all__ = ["CronArgs", "RecurrentArgs", "ScheduledArgs"]


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


class RecurrentArgs(CommonArgs):
    interval: timedelta | float


class ScheduledArgs(CommonArgs):
    scheduled_at: datetime


class CronRequiredArgs(CommonArgs):
    cron: str


class CronArgs(CronRequiredArgs, total=False):
    timezone: str
