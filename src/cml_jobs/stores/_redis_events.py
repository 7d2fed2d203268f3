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
from cml_jobs.stores._redis_connection import access_denied

__all__ = ["EventPublisher", "EventStream", "StreamEntry", "publish_events", "stream_key"]

logger = logging.getLogger("cml_jobs.events")

#: Entries kept (approximately: Redis trims whole macro-nodes), each one flush's events.
DEFAULT_MAXLEN = 10_000
_BATCH = 2000  # events per entry: enough to keep up with bulk scheduling


def stream_key(prefix: str) -> str:
    """The stream's key for a key prefix (``cml:events`` by default)."""
    return f"{prefix}events"


def _text(value: Any, errors: str = "strict") -> str:
    return value.decode(errors=errors) if isinstance(value, bytes) else str(value)


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
        # Encoded at flush time, one json.dumps per entry (none on a run's path).
        self._pending: deque[TaskEvent] = deque(maxlen=buffer)
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()  # set: everything published has been written
        self._idle.set()
        self.dropped = 0
        self.on_refused: Callable[[RedisError | OSError], None] | None = None

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
                if self.on_refused is not None and access_denied(exc):
                    self.on_refused(exc)  # not transient: the worker stops
                    return
                logger.warning("event stream: cannot write (%s); retrying in %.1f s", exc, backoff)
                self._ready.set()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _flush(self) -> None:
        while self._pending:
            batch = [self._pending.popleft() for _ in range(min(len(self._pending), _BATCH))]
            events = json.dumps([e.to_dict() for e in batch], separators=(",", ":"), default=str)
            entry: dict[Any, Any] = {"events": events}
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

    An entry that holds no cml-jobs events (foreign, or damaged) is skipped: logged once,
    counted in ``skipped``, and read past, so a reader's position moves on.

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
        batch: the most stream entries one read takes.
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
        #: How many stream entries (or events inside one) could not be read and were skipped.
        self.skipped = 0
        self._reported: set[str] = set()  # positions already logged and counted

    async def last_id(self) -> str:
        """The position of the newest event, or ``"0-0"`` for an empty stream."""
        newest = await self._client.xrevrange(self.key, count=1)
        if not newest:
            return "0-0"
        entry_id, fields = newest[0]
        try:
            count = len(_events(fields))
        except ValueError:  # not events: a position past it all the same
            count = 1
        return f"{_text(entry_id)}/{max(count, 1) - 1}"

    async def read(self, after: str = "0-0", *, wait: bool = False) -> list[StreamEntry]:
        """The events after position ``after`` (``"0-0"``: from the oldest kept), from up to
        ``batch`` stream entries past any that cannot be read.

        With ``wait``, waits up to ``block`` for an event when none is there yet.
        """
        found, _ = await self._read(after, wait)
        return found

    async def follow(self, after: str | None = None) -> AsyncIterator[StreamEntry]:
        """Every event after position ``after`` (by default: from now on), forever.

        Keep the ``id`` of the last entry handled and pass it back as ``after`` after a
        restart or a lost connection: nothing is missed while the stream still holds it.
        """
        position = after if after is not None else await self.last_id()
        while True:
            found, position = await self._read(position, wait=True)
            for entry in found:
                yield entry

    async def _read(self, after: str, wait: bool) -> tuple[list[StreamEntry], str]:
        """The events after ``after``, and the position past all it looked at."""
        entry_id, _, index = after.partition("/")
        found: list[StreamEntry] = []
        if index:  # the rest of a partly read entry first
            for got_id, fields in await self._client.xrange(self.key, entry_id, entry_id):
                found += self._entries(got_id, fields, after=int(index))
        position = entry_id if index else after
        while True:
            block = int(self.block.total_seconds() * 1000) if wait and not found else None
            streams = await self._client.xread({self.key: entry_id}, count=self.batch, block=block)
            entries = [entry for _, got in streams for entry in got]
            for got_id, fields in entries:
                found += self._entries(got_id, fields)
                entry_id = position = _text(got_id)
            # A full batch of entries none of which could be read: look further rather
            # than hand back nothing (a reader must never be stuck behind them).
            if found or len(entries) < self.batch:
                return found, position

    def _entries(self, entry_id: Any, fields: dict[Any, Any], after: int = -1) -> list[StreamEntry]:
        stream_id = _text(entry_id, errors="replace")
        try:
            events = _events(fields)
        except ValueError as exc:
            self._skip(f"{stream_id}/*", exc)
            return []
        found = []
        for i, raw in enumerate(events):
            if i <= after:
                continue
            try:
                found.append(StreamEntry(f"{stream_id}/{i}", TaskEvent.from_dict(raw)))
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                self._skip(f"{stream_id}/{i}", exc)
        return found

    def _skip(self, position: str, exc: Exception) -> None:
        if position in self._reported:
            return
        if len(self._reported) >= 10_000:
            self._reported.clear()
        self._reported.add(position)
        self.skipped += 1
        logger.warning(
            "event stream %s: entry %s holds no cml-jobs event (%s: %s); skipped",
            self.key,
            position,
            type(exc).__name__,
            str(exc)[:200],
        )


def _events(fields: dict[Any, Any]) -> list[Any]:
    """The events of one stream entry, parsed; ValueError (UnicodeDecodeError and
    JSONDecodeError are ones) when it holds no JSON array of events."""
    raw = fields.get(b"events", fields.get("events"))
    if raw is None:
        raise ValueError(f"no 'events' field (fields: {sorted(map(_text, fields))[:5]!r})")
    events = json.loads(_text(raw))
    if not isinstance(events, list):
        raise ValueError(f"'events' holds a JSON {type(events).__name__}, not an array")
    return events
