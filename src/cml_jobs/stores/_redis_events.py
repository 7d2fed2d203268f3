"""Lifecycle events across processes: a bounded Redis Stream, ``{prefix}events``.

Each process with a Redis connection publishes its hub's events there; any process can
follow the stream, from now or from a position it kept, and any number of readers read
it independently (plain XREAD, no consumer group: a reader owns its position).

Publishing never waits for Redis on a run's path: the hub's callback only appends the
event to a bounded buffer, and a background task writes what the buffer gathered over a
short linger (20 ms) as one stream entry (``XADD ... MAXLEN ~ n``, the entry's ``events``
field a JSON array), so a busy worker spends one command on many events. If Redis is
slow or away, the buffer fills, and its oldest events are dropped and counted, rather
than the worker slowing down.

An event's position is ``<entry id>/<index in the entry>``; a reader resumes after any
position, inside an entry too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from datetime import timedelta
from typing import Any, NamedTuple

import redis.asyncio
from redis.exceptions import RedisError

from cml_jobs._events import EventHub, TaskEvent

__all__ = ["EventPublisher", "EventStream", "StreamEntry", "publish_events", "stream_key"]

logger = logging.getLogger("cml_jobs.events")

#: Entries the stream keeps (approximately: Redis trims whole macro-nodes); an entry holds
#: the events one flush wrote, from one to a few hundred.
DEFAULT_MAXLEN = 10_000
_BATCH = 2000  # events per entry: enough to keep up with bulk scheduling


def stream_key(prefix: str) -> str:
    """The stream's key for a key prefix (``cml:events`` by default)."""
    return f"{prefix}events"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class EventPublisher:
    """Writes events to the stream from a background task; ``publish`` never blocks.

    Args:
        client: a ``redis.asyncio.Redis`` (an arq pool is one).
        prefix: the cml-jobs key prefix.
        maxlen: about how many entries the stream keeps.
        buffer: events held while Redis is slow or away; past it the oldest are dropped.
        linger: how long the first event of a batch waits for others to join it; at 1,000
            runs/s, 20 ms turns some 2,000 stream writes a second into 50.
    """

    def __init__(
        self,
        client: redis.asyncio.Redis,
        *,
        prefix: str = "cml:",
        maxlen: int = DEFAULT_MAXLEN,
        buffer: int = 10_000,
        linger: timedelta = timedelta(milliseconds=20),
    ) -> None:
        self._client = client
        self.key = stream_key(prefix)
        self.maxlen = maxlen
        self.linger = linger
        # Events, encoded at flush time as one JSON array: one json.dumps per entry
        # rather than one per event, and none on a run's path.
        self._pending: deque[TaskEvent] = deque(maxlen=buffer)
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()  # set: everything published has been written
        self._idle.set()
        self.dropped = 0

    def publish(self, event: TaskEvent) -> None:
        """Queue ``event`` for the stream (an ``EventHub`` callback)."""
        if len(self._pending) == self._pending.maxlen:
            self.dropped += 1
        self._pending.append(event)
        self._idle.clear()
        self._ready.set()

    def start(self) -> None:
        """Start writing in the background."""
        self._task = asyncio.create_task(self._run(), name="cml-jobs-event-publisher")

    async def stop(self, timeout: timedelta = timedelta(seconds=2)) -> None:
        """Write what is buffered (for up to ``timeout``), then stop."""
        if self._task is None:
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout.total_seconds())
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            await self._ready.wait()
            if self.linger:
                await asyncio.sleep(self.linger.total_seconds())
            self._ready.clear()
            try:
                await self._flush()
                backoff = 0.1
                if not self._pending:
                    self._idle.set()
            except (RedisError, OSError) as exc:
                logger.warning("event stream: cannot write (%s); retrying in %.1f s", exc, backoff)
                self._ready.set()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _flush(self) -> None:
        while self._pending:
            batch = [self._pending.popleft() for _ in range(min(len(self._pending), _BATCH))]
            events = [event.to_dict() for event in batch]
            entry: dict[Any, Any] = {
                "events": json.dumps(events, separators=(",", ":"), default=str)
            }
            try:
                await self._client.xadd(self.key, entry, maxlen=self.maxlen, approximate=True)
            except BaseException:
                self._pending.extendleft(reversed(batch))  # keep the order for the retry
                raise


async def publish_events(
    hub: EventHub, client: redis.asyncio.Redis, prefix: str, exit_stack: AsyncExitStack
) -> EventPublisher:
    """Publish every event of ``hub`` to the stream until ``exit_stack`` closes."""
    publisher = EventPublisher(client, prefix=prefix)
    unsubscribe: Callable[[], None] = hub.subscribe(publisher.publish)
    publisher.start()

    async def stop() -> None:
        unsubscribe()
        await publisher.stop()

    exit_stack.push_async_callback(stop)
    return publisher


class StreamEntry(NamedTuple):
    """One event read from the stream, with its position (keep ``id`` to resume):
    ``<stream entry id>/<index in the entry>``."""

    id: str
    event: TaskEvent


class EventStream:
    """Follows the lifecycle events that workers (and apps) publish to Redis.

    Example:
        ```python
        stream = EventStream(redis.asyncio.Redis.from_url(url), prefix="cml:")
        async for entry in stream.follow(after=last_seen_id):
            print(entry.event.kind, entry.event.task_id)
            last_seen_id = entry.id
        ```

    Args:
        client: a ``redis.asyncio.Redis``; the stream does not close it.
        prefix: the cml-jobs key prefix the workers use.
        block: how long one read waits for new events.
        batch: the most events one read returns.
    """

    def __init__(
        self,
        client: redis.asyncio.Redis,
        *,
        prefix: str = "cml:",
        block: timedelta = timedelta(seconds=1),
        batch: int = 100,
    ) -> None:
        self._client = client
        self.key = stream_key(prefix)
        self.block = block
        self.batch = batch

    async def last_id(self) -> str:
        """The position of the newest event, or ``"0-0"`` for an empty stream."""
        newest = await self._client.xrevrange(self.key, count=1)
        if not newest:
            return "0-0"
        entry_id, fields = newest[0]
        return f"{_text(entry_id)}/{len(_events(fields)) - 1}"

    async def read(self, after: str = "0-0", *, wait: bool = False) -> list[StreamEntry]:
        """The events after position ``after`` (``"0-0"``: from the oldest kept), from up to
        ``batch`` stream entries.

        With ``wait``, waits up to ``block`` for an event when none is there yet.
        """
        entry_id, _, index = after.partition("/")
        found: list[StreamEntry] = []
        if index:  # the rest of a partly read entry first
            for got_id, fields in await self._client.xrange(self.key, entry_id, entry_id):
                found += _entries(got_id, fields, after=int(index))
        if found:
            wait = False
        block = int(self.block.total_seconds() * 1000) if wait else None
        streams = await self._client.xread({self.key: entry_id}, count=self.batch, block=block)
        for _, entries in streams:
            for got_id, fields in entries:
                found += _entries(got_id, fields)
        return found

    async def follow(self, after: str | None = None) -> AsyncIterator[StreamEntry]:
        """Every event after position ``after`` (by default: from now on), forever.

        Keep the ``id`` of the last entry handled and pass it back as ``after`` after a
        restart or a lost connection: nothing is missed while the stream still holds it.
        """
        position = after if after is not None else await self.last_id()
        while True:
            for entry in await self.read(position, wait=True):
                position = entry.id
                yield entry


def _entries(entry_id: Any, fields: dict[Any, Any], after: int = -1) -> list[StreamEntry]:
    stream_id = _text(entry_id)
    return [
        StreamEntry(f"{stream_id}/{i}", TaskEvent.from_dict(raw))
        for i, raw in enumerate(_events(fields))
        if i > after
    ]


def _events(fields: dict[Any, Any]) -> list[dict[str, Any]]:
    raw = fields.get(b"events", fields.get("events"))
    events: list[dict[str, Any]] = json.loads(_text(raw))
    return events
