"""Lifecycle events, and the hub that hands them to observers in this process."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import weakref
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

__all__ = ["REDACTED", "EventHub", "EventKind", "TaskEvent", "redact"]

#: What a redacted ``data`` value is replaced with, in logs and events.
REDACTED = "[redacted]"

logger = logging.getLogger("cml_jobs.events")


class EventKind(str, enum.Enum):
    """What happened to a task."""

    SCHEDULED = "scheduled"
    STARTED = "started"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    RETRIED = "retried"
    TIMED_OUT = "timed_out"
    MISSED = "missed"
    SKIPPED = "skipped"
    STOPPED = "stopped"
    CANCELLED = "cancelled"
    PAUSED = "paused"
    RESUMED = "resumed"
    PARKED = "parked"
    INTERRUPTED = "interrupted"  # its worker stopped mid-run and gave it back for a re-run


@dataclass(frozen=True)
class TaskEvent:
    """One lifecycle change of a task.

    Attributes:
        kind: what happened.
        task_id: the task.
        job_name: its job's registered name ("" when unknown, e.g. a tampered descriptor).
        at: when it happened.
        occurrence_at: the occurrence concerned, if any.
        attempt: the attempt number, for run events.
        duration: how long the run took, for events that end a run.
        error: a one-line summary of what went wrong, if anything.
        count: how many occurrences the event stands for (several missed ones coalesce).
        data: the task's ``data`` on run events, redacted as its job class asks
            (``redact_data``); None on other events.
    """

    kind: EventKind
    task_id: str
    job_name: str
    at: datetime
    occurrence_at: datetime | None = None
    attempt: int | None = None
    duration: timedelta | None = None
    error: str | None = None
    count: int = 1
    data: Mapping[str, Any] | None = None

    def to_json(self) -> str:
        """The event as one JSON object (times as ISO 8601, the duration in seconds)."""
        return json.dumps(self.to_dict(), separators=(",", ":"), default=str)

    def to_dict(self) -> dict[str, Any]:
        """The fields ``to_json`` writes, as JSON-ready values."""
        at, occurrence, duration = self.at, self.occurrence_at, self.duration
        return {
            "kind": self.kind.value,
            "task_id": self.task_id,
            "job_name": self.job_name,
            "at": at.isoformat(),
            "occurrence_at": occurrence.isoformat() if occurrence is not None else None,
            "attempt": self.attempt,
            "duration": duration.total_seconds() if duration is not None else None,
            "error": self.error,
            "count": self.count,
            "data": self.data,
        }

    @classmethod
    def from_json(cls, raw: str | bytes) -> TaskEvent:
        """The event that ``to_json`` wrote."""
        return cls.from_dict(json.loads(raw))

    @classmethod
    def from_dict(cls, fields: dict[str, Any]) -> TaskEvent:
        """The event whose ``to_json`` text parsed to ``fields``."""
        occurrence, duration = fields["occurrence_at"], fields["duration"]
        return cls(
            kind=EventKind(fields["kind"]),
            task_id=fields["task_id"],
            job_name=fields["job_name"],
            at=datetime.fromisoformat(fields["at"]),
            occurrence_at=datetime.fromisoformat(occurrence) if occurrence else None,
            attempt=fields["attempt"],
            duration=timedelta(seconds=duration) if duration is not None else None,
            error=fields["error"],
            count=fields["count"],
            data=fields["data"],
        )


def redact(data: Mapping[str, Any], rule: bool | frozenset[str] | set[str]) -> dict[str, Any]:
    """``data`` as logs and events show it: ``rule`` True hides every value, a set of keys
    hides those keys' values, False hides nothing."""
    if rule is True:
        return dict.fromkeys(data, REDACTED)
    if not rule:
        return dict(data)
    return {key: REDACTED if key in rule else value for key, value in data.items()}


EventCallback = Callable[[TaskEvent], object]


class EventHub:
    """Fans events out to callbacks and async iterators; never blocks the emitter.

    Args:
        buffer: events kept per async-iterator observer; when one falls behind by more,
            its oldest events are dropped (and counted in ``dropped``).
    """

    def __init__(self, buffer: int = 1000) -> None:
        self._callbacks: list[EventCallback] = []
        # Weak: an iterator its owner dropped without closing stops receiving events.
        self._iterators: weakref.WeakSet[_EventIterator] = weakref.WeakSet()
        self._buffer = buffer
        self.dropped = 0

    def subscribe(self, callback: EventCallback) -> Callable[[], None]:
        """Call ``callback(event)`` for every event. Returns a function that unsubscribes.

        Callbacks run inline and must be quick; an exception in one is logged and ignored.
        """
        self._callbacks.append(callback)
        return lambda: self._callbacks.remove(callback)

    def events(self) -> AsyncIterator[TaskEvent]:
        """An async iterator over the events emitted from this call on, until it is closed
        (``aclose()``) or dropped."""
        iterator = _EventIterator(self, self._buffer)
        self._iterators.add(iterator)
        return iterator

    def emit(self, event: TaskEvent) -> None:
        """Hand ``event`` to every observer."""
        for callback in list(self._callbacks):
            try:
                callback(event)
            except Exception:
                logger.exception("event observer %r failed on %s", callback, event.kind.value)
        if not self._iterators:  # most processes have no iterator: skip the weak set's copy
            return
        for iterator in list(self._iterators):
            if not iterator.offer(event):
                self.dropped += 1

    def _discard(self, iterator: _EventIterator) -> None:
        self._iterators.discard(iterator)


class _EventIterator:
    """What ``EventHub.events`` returns: its own bounded backlog of events.

    Registered when created (not when first awaited, as an async generator would be), so
    events emitted between ``events()`` and the first ``anext`` are not lost.
    """

    def __init__(self, hub: EventHub, size: int) -> None:
        self._hub = hub
        self._queue: asyncio.Queue[TaskEvent] = asyncio.Queue(size)

    def __aiter__(self) -> _EventIterator:
        return self

    async def __anext__(self) -> TaskEvent:
        return await self._queue.get()

    def offer(self, event: TaskEvent) -> bool:
        """Queue ``event``, dropping the oldest when full. False when one was dropped."""
        dropped = False
        if self._queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self._queue.get_nowait()
                dropped = True
        self._queue.put_nowait(event)
        return not dropped

    async def aclose(self) -> None:
        """Stop receiving events."""
        self._hub._discard(self)
