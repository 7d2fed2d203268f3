"""Connecting a process to the store that ``redis_url`` names."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from cml_jobs._config import Settings
from cml_jobs.stores._base import ScheduleStore
from cml_jobs.stores.memory import InMemoryScheduleStore

__all__ = ["history_options", "open_store"]


@contextlib.asynccontextmanager
async def open_store(
    settings: Settings, given: ScheduleStore | None = None
) -> AsyncIterator[tuple[ScheduleStore, Any]]:
    """The store ``settings.redis_url`` names (``given`` instead, if any) and the Redis
    client behind it (None in the embedded mode), open until exit.

    Raises:
        StoreUnavailableError: Redis cannot be reached.
    """
    history = history_options(settings)
    if settings.embedded:
        yield given or InMemoryScheduleStore(**history), None
        return
    from cml_jobs.stores.redis import open_redis_store

    async with open_redis_store(settings.redis_url, prefix=settings.key_prefix, **history) as store:
        yield given or store, store.client


def history_options(settings: Settings) -> dict[str, Any]:
    """The store keywords for the run history the settings ask for."""
    return {
        "history_size": settings.history_size,
        "history_retention": settings.history_retention,
    }
