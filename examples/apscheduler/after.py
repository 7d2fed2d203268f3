"""The app of before.py on cml-jobs: one job class per callable, one descriptor per
APScheduler job (docs/guides/migrating-from-apscheduler.md). ``python after.py`` runs it
in memory for a moment and prints the tasks."""

import asyncio
from datetime import datetime, timedelta, timezone

from cml_jobs import (
    BackgroundTaskScheduler,
    CronTaskDescriptor,
    RecurrentBackgroundJob,
    RecurrentTaskDescriptor,
    ScheduledBackgroundJob,
    ScheduledTaskDescriptor,
    TaskDescriptor,
    TaskEvent,
    backgroundjob,
)


# --8<-- [start:jobs]
@backgroundjob(task_type="recurrent")
class DigestJob(RecurrentBackgroundJob):  # was send_digest(recipient)
    def __init__(self, recipient: str) -> None:
        self.recipient = recipient  # data: IDs and configuration, stored as JSON

    async def run_every(self, *args: object, **kwargs: object) -> None:
        print(f"digest for {self.recipient}")


@backgroundjob(task_type="recurrent")
class CleanupJob(RecurrentBackgroundJob):  # was clean_folder(folder)
    def __init__(self, folder: str) -> None:
        self.folder = folder

    async def run_every(self, *args: object, **kwargs: object) -> None:
        print(f"cleaning {self.folder}")


@backgroundjob(task_type="scheduled")
class ReminderJob(ScheduledBackgroundJob):  # was remind(user_id): a one-time job
    def __init__(self, user_id: int) -> None:
        self.user_id = user_id

    async def run_at(self, *args: object, **kwargs: object) -> None:
        print(f"reminding user {self.user_id}")


# --8<-- [end:jobs]


# --8<-- [start:tasks]
TASKS: list[TaskDescriptor] = [
    RecurrentTaskDescriptor(
        id="digest",
        name="DigestJob",
        data={"recipient": "ops@example.com"},
        interval=timedelta(minutes=5),
        misfire_grace_time=30,
        coalesce=True,
        max_instances=1,
    ),
    CronTaskDescriptor(
        id="cleanup",
        name="CleanupJob",
        data={"folder": "/var/tmp/app"},
        cron="0 15 3 * * 1-5",
        timezone="Europe/Paris",
        jitter=60,
        misfire_grace_time=1,  # APScheduler's default: 1 s; cml-jobs' own is 60 s
    ),
    ScheduledTaskDescriptor(
        id="remind-42",
        name="ReminderJob",
        data={"user_id": 42},
        scheduled_at=datetime(2030, 1, 7, 9, 0, tzinfo=timezone.utc),
        misfire_grace_time=1,
    ),
]
# --8<-- [end:tasks]


# --8<-- [start:day-to-day]
async def day_to_day(scheduler: BackgroundTaskScheduler) -> None:
    bus = scheduler.bus
    for task in TASKS:  # add_job(..., replace_existing=True)
        await bus.schedule_task(task, replace=True)
    await bus.pause_task("digest")  # pause_job
    await bus.resume_task("digest")  # resume_job: from its next occurrence after now
    faster = TASKS[0].model_copy(update={"interval": timedelta(minutes=1)})
    await bus.schedule_task(faster, replace=True)  # modify_job / reschedule_job
    for info in await scheduler.list_tasks():  # get_jobs, job.next_run_time
        print(info.id, info.next_run_time, info.last_outcome)
    await bus.cancel_task("remind-42")  # remove_job


def on_event(event: TaskEvent) -> None:  # add_listener(callback, EVENT_JOB_ERROR | ...)
    if event.error:
        print(f"{event.task_id}: {event.kind.value}: {event.error}")


# --8<-- [end:day-to-day]


async def main() -> None:
    scheduler = BackgroundTaskScheduler.configure(modules=[__name__], redis_url="memory://")
    async with scheduler:
        scheduler.subscribe(on_event)
        await day_to_day(scheduler)


if __name__ == "__main__":
    asyncio.run(main())
