"""Testing a job with cml_jobs.testing: a clock you move by hand, and due runs run now, in
this process: no Redis, no worker, no sleeps.

pytest examples/test_restock.py   (with pytest-asyncio)
"""

from __future__ import annotations

import jobs
import pytest

from cml_jobs import BackgroundTaskScheduler, EventKind, RecurrentTaskDescriptor
from cml_jobs.testing import ManualClock, run_due


@pytest.mark.asyncio
async def test_restock_ends_its_task_when_the_shelf_is_empty(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(jobs.STOCK, "sku-9", 2)
    clock = ManualClock()  # 2030-01-01 00:00 UTC until you move it
    scheduler = BackgroundTaskScheduler.configure(modules=["jobs"], clock=clock, run_worker=False)
    async with scheduler:
        await scheduler.bus.schedule_task(
            RecurrentTaskDescriptor(id="r9", name="RestockJob", data={"sku": "sku-9"}, interval=60)
        )
        clock.advance(seconds=60)  # the first occurrence is due
        events = await run_due(scheduler)  # runs it now and returns what happened
        assert [event.kind for event in events] == [EventKind.STARTED, EventKind.SUCCEEDED]

        clock.advance(seconds=60)
        events = await run_due(scheduler)
        assert events[-1].kind is EventKind.STOPPED  # StopRecurrence: sold out
        assert jobs.STOCK["sku-9"] == 0
        assert await scheduler.list_tasks() == []  # the task has ended
