"""Connecting a process to the store that its settings name: ``store_url``, or else
``redis_url`` (``memory://``, a Redis, or a PostgreSQL database)."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Any

from cml_jobs._config import Settings
from cml_jobs.stores._base import ScheduleStore
from cml_jobs.stores.memory import InMemoryScheduleStore

__all__ = ["history_options", "open_store", "open_store_patiently", "store_opener"]


@contextlib.asynccontextmanager
async def open_store(
    settings: Settings, given: ScheduleStore | None = None
) -> AsyncIterator[tuple[ScheduleStore, Any]]:
    """The store the settings name (``given`` instead, if any) and the Redis client
    behind it (None in the embedded mode and for PostgreSQL), open until exit.

    Raises:
        StoreUnavailableError: the store's server cannot be reached.
    """
    history = history_options(settings)
    if settings.embedded:
        yield given or InMemoryScheduleStore(**history), None
        return
    if settings.store_kind == "postgresql":
        from cml_jobs.stores.postgres import open_postgres_store

        async with open_postgres_store(settings.store_location, **history) as found:
            yield given or found, None
        return
    from cml_jobs.stores.redis import open_redis_store

    async with open_redis_store(
        settings.store_location, prefix=settings.key_prefix, **history
    ) as store:
        yield given or store, store.client


def open_store_patiently(settings: Settings) -> AbstractAsyncContextManager[ScheduleStore]:
    """The shared store the settings name, on connections of its own that wait for its
    server for as long as it takes (a worker's; never the ``memory://`` store)."""
    if settings.store_kind == "postgresql":
        from cml_jobs.stores.postgres import open_postgres_store

        return open_postgres_store(
            settings.store_location, patient=True, **history_options(settings)
        )
    from cml_jobs.stores.redis import open_redis_store

    return open_redis_store(
        settings.store_location,
        prefix=settings.key_prefix,
        patient=True,
        **history_options(settings),
    )


def store_opener(settings: Settings) -> functools.partial[Any] | None:
    """How a heartbeat thread opens a connection of its own to the shared store; None
    for the ``memory://`` store, whose leases are renewed on the process's own loop."""
    if settings.embedded:
        return None
    return functools.partial(open_store_patiently, settings)


def history_options(settings: Settings) -> dict[str, Any]:
    """The store keywords for the run history the settings ask for."""
    return {
        "history_size": settings.history_size,
        "history_retention": settings.history_retention,
    }
