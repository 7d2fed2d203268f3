"""Jobs: a recurrent job that ends itself, and a one-time job, run in this process.

python examples/jobs.py   (memory://: no Redis needed)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

from cml_jobs import (
    BackgroundTaskScheduler,
    EventKind,
    RecurrentBackgroundJob,
    RecurrentTaskDescriptor,
    ScheduledBackgroundJob,
    ScheduledTaskDescriptor,
    StopRecurrence,
    TaskEvent,
    backgroundjob,
)

STOCK = {"sku-1": 3}  # stands in for your database


# --8<-- [start:recurrent]
@backgroundjob(task_type="recurrent")
class RestockJob(RecurrentBackgroundJob):
    """Every occurrence takes one item; the task ends when the shelf is empty."""

    def __init__(self, sku: str, warn_below: int = 2) -> None:  # the task's `data`
        self.sku = sku
        self.warn_below = warn_below

    async def run_every(self, *args: Any, **kwargs: Any) -> None:
        left = STOCK[self.sku] = STOCK[self.sku] - 1
        print(f"{self.context.task_id}: {left} left (attempt {self.context.attempt})")
        if left == 0:
            raise StopRecurrence(f"{self.sku} is sold out")  # no more occurrences
        if left < self.warn_below:
            print(f"{self.sku} is running low")


# --8<-- [end:recurrent]


# --8<-- [start:scheduled]
@backgroundjob(task_type="scheduled", name="send-report")  # tasks use this name
class ReportJob(ScheduledBackgroundJob):
    redact_data = frozenset({"recipient"})  # shown as [redacted] in logs and events

    def __init__(self, recipient: str) -> None:
        self.recipient = recipient

    async def run_at(self, *args: Any, **kwargs: Any) -> None:
        print(f"report sent, intended for {self.context.occurrence_at:%H:%M:%S.%f}")


# --8<-- [end:scheduled]


async def main() -> None:
    scheduler = BackgroundTaskScheduler.configure(modules=[__name__])  # memory://
    async with scheduler:
        ended = scheduler.events()
        soon = scheduler.clock.now() + timedelta(milliseconds=100)
        await scheduler.bus.schedule_task(
            RecurrentTaskDescriptor(
                id="restock-sku-1", name="RestockJob", data={"sku": "sku-1"}, interval=0.1
            )
        )
        await scheduler.bus.schedule_task(
            ScheduledTaskDescriptor(
                id="report-1",
                name="send-report",
                data={"recipient": "ops@example.com"},
                scheduled_at=soon,
            )
        )
        await asyncio.wait_for(_until_over(ended), timeout=30)
        # Both tasks are over: nothing is due any more (a finished one-time task stays
        # listed, with its outcome, for history_retention).
        assert all(task.next_run_time is None for task in await scheduler.list_tasks())


async def _until_over(events: AsyncIterator[TaskEvent]) -> None:
    waiting = {("restock-sku-1", EventKind.STOPPED), ("report-1", EventKind.SUCCEEDED)}
    async for event in events:
        waiting.discard((event.task_id, event.kind))
        if not waiting:
            return


if __name__ == "__main__":
    asyncio.run(main())
