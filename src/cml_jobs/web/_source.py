"""Where the dashboard reads from: a scheduler (started later, in the app's lifespan) or
a bus, and the live events of the processes that run the tasks."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from cml_jobs._bus import BackgroundTasksBus, TaskInfo
from cml_jobs._events import EventHub, TaskEvent
from cml_jobs._scheduler import BackgroundTaskScheduler
from cml_jobs._timing import Clock, SystemClock
from cml_jobs.exceptions import ConfigurationError

__all__ = ["Source"]

#: How long a listing of every task is reused between pages: 10,000 tasks cost a few
#: hundred ms to read, and an operator paging through them should not pay it per page.
LISTING_TTL_S = 2.0


@dataclass
class Source:
    """The dashboard's view of cml-jobs.

    Args:
        target: a ``BackgroundTaskScheduler`` (its bus is looked up per request, so the
            dashboard can be built before the scheduler starts) or a ``BackgroundTasksBus``.
        hub: where live events come from when there is no Redis stream (a bus given
            alone, on memory://).
    """

    target: BackgroundTaskScheduler | BackgroundTasksBus
    hub: EventHub | None = None
    _listing: tuple[float, list[TaskInfo]] | None = field(default=None, repr=False)
    _client: Any = field(default=None, repr=False)

    @property
    def bus(self) -> BackgroundTasksBus:
        """The bus to read and act through.

        Raises:
            ConfigurationError: the scheduler is not started.
        """
        if isinstance(self.target, BackgroundTasksBus):
            return self.target
        return self.target.bus

    @property
    def clock(self) -> Clock:
        """The scheduler's clock (the system's for a bus given alone)."""
        if isinstance(self.target, BackgroundTaskScheduler):
            return self.target.clock
        return SystemClock()

    async def tasks(self) -> list[TaskInfo]:
        """Every task, read at most every ``LISTING_TTL_S`` seconds."""
        now = time.monotonic()
        if self._listing is not None and now - self._listing[0] < LISTING_TTL_S:
            return self._listing[1]
        found = await self.bus.list_tasks()
        self._listing = (now, found)
        return found

    def changed(self) -> None:
        """An action changed a task: the next listing reads the store again."""
        self._listing = None

    def _redis(self) -> tuple[str, str] | None:
        if isinstance(self.target, BackgroundTaskScheduler):
            settings = self.target.settings
            if not settings.embedded:
                return settings.redis_url, settings.key_prefix
        return None

    async def follow(self, after: str | None) -> AsyncIterator[tuple[str, TaskEvent]]:
        """Live events as ``(position, event)``: from the Redis stream (every worker's,
        resumable after ``after``) or, in the embedded mode, from this process's hub."""
        redis = self._redis()
        if redis is not None:
            from cml_jobs.events import EventStream
            from cml_jobs.stores.redis import redis_client

            # One client (a connection pool) for every viewer of this dashboard: a feed
            # ends by cancellation when its browser leaves, when nothing can be awaited.
            if self._client is None:
                self._client = redis_client(redis[0], patient=True)
            stream = EventStream(self._client, prefix=redis[1])
            async for entry in stream.follow(after=after):
                yield entry.id, entry.event
            return
        hub = self.hub or self._hub()
        position = 0
        async for event in hub.events():
            position += 1
            yield str(position), event

    def _hub(self) -> EventHub:
        if isinstance(self.target, BackgroundTaskScheduler):
            return self.target.hub
        raise ConfigurationError(
            "the live feed needs the scheduler, or a bus with hub=...; "
            "pass dashboard(scheduler) instead of its bus"
        )
