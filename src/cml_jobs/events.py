"""Lifecycle events: what happened to a task, in this process or in any worker.

In the process that runs a scheduler, ``scheduler.subscribe(callback)`` and
``scheduler.events()`` hand over each ``TaskEvent`` as it happens. Across processes,
every process with a ``redis://`` URL publishes its events to a bounded Redis Stream
(``{key_prefix}events``), and ``EventStream`` follows it from any process, from now on
or from a position kept across restarts.

Example:
    ```python
    from cml_jobs.events import EventStream
    from cml_jobs.stores.redis import redis_client

    stream = EventStream(redis_client(url, patient=True), prefix="cml:")
    async for entry in stream.follow(after=last_id):
        print(entry.event.kind.value, entry.event.task_id)
        last_id = entry.id
    ```

``EventStream`` and ``StreamEntry`` live beside the Redis store and are loaded on first
use, so that importing this module imports no redis.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cml_jobs._events import EventKind, TaskEvent

if TYPE_CHECKING:
    from cml_jobs.stores._redis_events import EventStream, StreamEntry

__all__ = ["EventKind", "EventStream", "StreamEntry", "TaskEvent"]


def __getattr__(name: str) -> object:
    # The stream reader imports redis; an app on memory:// that only reads TaskEvent
    # should not pay for it.
    if name in ("EventStream", "StreamEntry"):
        from cml_jobs.stores import _redis_events

        value: object = getattr(_redis_events, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cml_jobs.events' has no attribute {name!r}")
