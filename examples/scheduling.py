"""Scheduling: every trigger and run policy a descriptor takes, then pause, replace, cancel.

python examples/scheduling.py   (memory://, and no worker: nothing runs, it only schedules)
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from cml_jobs import (
    BackgroundTasksBus,
    BackgroundTaskScheduler,
    CronTaskDescriptor,
    RecurrentBackgroundJob,
    RecurrentTaskDescriptor,
    ScheduledBackgroundJob,
    ScheduledTaskDescriptor,
    TaskExistsError,
    TasksRefusedError,
    backgroundjob,
)

PARIS = ZoneInfo("Europe/Paris")


@backgroundjob(task_type="recurrent")
class SyncJob(RecurrentBackgroundJob):
    def __init__(self, account_id: str) -> None:
        self.account_id = account_id

    async def run_every(self, *args: Any, **kwargs: Any) -> None: ...


@backgroundjob(task_type="scheduled")
class ReminderJob(ScheduledBackgroundJob):
    def __init__(self, user_id: str) -> None:
        self.user_id = user_id

    async def run_at(self, *args: Any, **kwargs: Any) -> None: ...


# --8<-- [start:interval]
# Every 5 minutes, on the grid start_at + k * 5 min: no drift, whatever a run takes.
every_five_minutes = RecurrentTaskDescriptor(
    id="sync-acme",
    name="SyncJob",
    data={"account_id": "acme"},
    interval=300,  # seconds, or timedelta(minutes=5)
    start_at=datetime(2030, 1, 1, 9, 0, tzinfo=PARIS),  # first occurrence; aware
    end_at=datetime(2030, 12, 31, 18, 0, tzinfo=PARIS),  # last one; then the task ends
    jitter=timedelta(seconds=20),  # spread many tasks on one grid over 20 s
)
# --8<-- [end:interval]

# --8<-- [start:cron]
# Cron, in a timezone: 02:30 Paris time on weekdays, through daylight-saving changes.
nightly = CronTaskDescriptor(
    id="sync-acme-nightly",
    name="SyncJob",
    data={"account_id": "acme"},
    cron="30 2 * * 1-5",  # a sixth leading field counts seconds: "*/10 * * * * *"
    timezone="Europe/Paris",  # IANA name; UTC by default
    misfire_grace_time=timedelta(hours=1),  # up to 1 h late still runs; later: missed
    coalesce=True,  # several missed occurrences: one catch-up run (the default)
)
# --8<-- [end:cron]

# --8<-- [start:once]
# Once, at an aware datetime (any timezone; stored in UTC).
reminder = ScheduledTaskDescriptor(
    id="remind-u42",
    name="ReminderJob",
    data={"user_id": "u42"},
    scheduled_at=datetime(2030, 1, 2, 8, 0, tzinfo=PARIS),
    misfire_grace_time=None,  # however late the workers get to it, it still runs
)
# --8<-- [end:once]

# --8<-- [start:policy]
# How each run is handled: a timeout, retries with backoff, overlapping runs.
slow_and_flaky = RecurrentTaskDescriptor(
    id="sync-globex",
    name="SyncJob",
    data={"account_id": "globex"},
    interval=timedelta(minutes=1),
    timeout=50,  # a run taking longer is cancelled and recorded as timed out
    max_retries=3,  # a failed run is tried again 3 times...
    retry_backoff=2,  # ...after 2 s, 4 s and 8 s
    max_instances=2,  # a second run may start while one is still going (default 1)
)
# --8<-- [end:policy]


# --8<-- [start:bus]
async def main() -> None:
    scheduler = BackgroundTaskScheduler.configure(modules=[__name__], run_worker=False)
    async with scheduler:
        bus = scheduler.bus
        for task in (every_five_minutes, nightly, reminder, slow_and_flaky):
            await bus.schedule_task(task)
        try:
            await bus.schedule_task(every_five_minutes)
        except TaskExistsError:  # ids are yours; scheduling one twice is refused...
            await bus.schedule_task(every_five_minutes, replace=True)  # ...unless replaced
        await bus.pause_task("sync-globex")  # keeps the task, runs nothing
        await bus.resume_task("sync-globex")  # next occurrence on the same grid
        await bus.cancel_task("remind-u42")  # gone; returns how many runs were under way
        await schedule_accounts(bus, ["initech", "umbrella", "hooli"])
        await bus.cancel_tasks(["sync-hooli"])  # id -> runs under way (None: no such task)
        for info in await scheduler.list_tasks():
            print(f"{info.id:<18} next run at {info.next_run_time:%Y-%m-%d %H:%M:%S} UTC")


# --8<-- [end:bus]


# --8<-- [start:bulk]
async def schedule_accounts(bus: BackgroundTasksBus, accounts: list[str]) -> None:
    """One task per account: every descriptor checked first, 1,000 per store call."""
    descriptors = [
        RecurrentTaskDescriptor(
            id=f"sync-{a}", name="SyncJob", data={"account_id": a}, interval=300
        )
        for a in accounts
    ]
    try:
        result = await bus.schedule_tasks(descriptors)
    except TasksRefusedError as refused:  # batches without a refused one were written
        for task_id, error in refused.result.refused.items():
            print(f"task {task_id} refused: {error}")
        return
    print(f"{len(result.scheduled)} scheduled, {len(result.unchanged)} already were")


# --8<-- [end:bulk]


if __name__ == "__main__":
    asyncio.run(main())
