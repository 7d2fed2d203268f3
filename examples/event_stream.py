"""Follow every process's lifecycle events from the Redis stream, resuming where you left.

python examples/event_stream.py redis://localhost:6379/0
"""

from __future__ import annotations

import asyncio
import sys

from cml_jobs.events import EventStream
from cml_jobs.stores.redis import redis_client


async def follow(redis_url: str, last_id: str | None = None) -> None:
    stream = EventStream(redis_client(redis_url, patient=True), prefix="cml:")
    async for entry in stream.follow(after=last_id):  # None: from now on
        print(entry.event.kind.value, entry.event.task_id, entry.event.error or "")
        last_id = entry.id  # keep it to resume after a restart, missing nothing


if __name__ == "__main__":
    asyncio.run(follow(sys.argv[1] if len(sys.argv) > 1 else "redis://localhost:6379/0"))
