"""Observability: one structured log line per run, and lifecycle events in this process.

python examples/observability.py   (memory://: no Redis needed)
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

from cml_jobs import (
    BackgroundTaskScheduler,
    EventKind,
    RecurrentBackgroundJob,
    RecurrentTaskDescriptor,
    TaskEvent,
    backgroundjob,
)


# --8<-- [start:logging]
class JsonFormatter(logging.Formatter):
    """Run outcomes as JSON: the fields cml-jobs puts on the record as `record.cml_jobs`."""

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "cml_jobs", None) or {"message": record.getMessage()}
        return json.dumps({"level": record.levelname, **fields}, default=str)


# --8<-- [end:logging]


# --8<-- [start:job]
@backgroundjob(task_type="recurrent")
class ProbeJob(RecurrentBackgroundJob):
    redact_data = frozenset({"token_ref"})  # hidden in log lines and events

    def __init__(self, url: str, token_ref: str) -> None:
        self.url = url

    async def run_every(self, *args: Any, **kwargs: Any) -> None:
        if self.context.attempt == 1:
            raise ConnectionError(f"{self.url} did not answer")  # failed, then retried


# --8<-- [end:job]


async def main() -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    logging.getLogger("cml_jobs.runs").addHandler(handler)  # one line per run outcome
    logging.getLogger("cml_jobs.runs").setLevel(logging.INFO)

    counts: Counter[EventKind] = Counter()
    scheduler = BackgroundTaskScheduler.configure(modules=[__name__])
    async with scheduler:
        scheduler.subscribe(lambda event: counts.update([event.kind]))  # inline: keep it quick
        events = scheduler.events()  # or iterate: every event from now on
        await scheduler.bus.schedule_task(
            RecurrentTaskDescriptor(
                id="probe-api",
                name="ProbeJob",
                data={"url": "https://api.example.com", "token_ref": "env:API_TOKEN"},
                interval=timedelta(milliseconds=200),
                max_retries=1,
                retry_backoff=0.05,
            )
        )
        await _until_succeeded(events)
    print({kind.value: count for kind, count in counts.items()})


async def _until_succeeded(events: AsyncIterator[TaskEvent]) -> None:
    async for event in events:
        if event.kind is EventKind.SUCCEEDED:
            return


if __name__ == "__main__":
    asyncio.run(asyncio.wait_for(main(), timeout=30))
