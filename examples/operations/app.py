"""Operating tasks: run one now, backfill a past window, read the history, see the workers.

Run it with `python examples/operations/app.py` (memory://, no server needed).
"""

import asyncio
from datetime import timedelta

from cml_jobs import (
    BackgroundTaskScheduler,
    RecurrentBackgroundJob,
    RecurrentTaskDescriptor,
    backgroundjob,
)


@backgroundjob(task_type="recurrent")
class SyncAccountJob(RecurrentBackgroundJob):
    redact_data = frozenset({"email"})  # hidden in logs, events and history

    def __init__(self, email: str) -> None:
        self.email = email

    async def run_every(self, *args: object, **kwargs: object) -> None:
        print(f"sync for occurrence {self.context.occurrence_at:%H:%M}")


async def main() -> None:
    scheduler = BackgroundTaskScheduler.configure(modules=[__name__], history_size=50)
    async with scheduler:
        bus, events = scheduler.bus, scheduler.events()
        start = scheduler.clock.now().replace(second=0, microsecond=0) - timedelta(hours=2)
        task = RecurrentTaskDescriptor(
            id="sync-alice",
            name="SyncAccountJob",
            data={"email": "alice@example.com"},
            interval=timedelta(minutes=15),
            start_at=start,
        )
        await bus.schedule_task(task)
        print("next three:", [f"{at:%H:%M}" for at in await bus.upcoming("sync-alice", 3)])
        await bus.trigger_task("sync-alice")  # one extra run, now
        # The 15-minute occurrences of the last hour, once each, one after another.
        now = scheduler.clock.now()
        await bus.backfill("sync-alice", now - timedelta(hours=1), now)
        while (await bus.get_task("sync-alice")).running:  # extra runs going or waiting
            await anext(events)
        for run in await bus.get_history("sync-alice", limit=10):
            print(run.occurrence_at.strftime("%H:%M"), run.outcome.value, run.worker)
        print("workers:", [(w.id, w.running, w.max_jobs) for w in await bus.list_workers()])
        await bus.pause_task("sync-alice", note="account migration, back at 14:00")
        print("note:", (await bus.get_task("sync-alice")).note)


if __name__ == "__main__":
    asyncio.run(main())
