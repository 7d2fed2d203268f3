"""An app on APScheduler 3: three jobs in a Redis job store (the "before" of
docs/guides/migrating-from-apscheduler.md; after.py is the same app on cml-jobs)."""

from datetime import datetime, timezone
from typing import Any


def send_digest(recipient: str) -> None:
    print(f"digest for {recipient}")


def clean_folder(folder: str) -> None:
    print(f"cleaning {folder}")


def remind(user_id: int) -> None:
    print(f"reminding user {user_id}")


# --8<-- [start:jobs]
def add_jobs(scheduler: Any) -> None:
    scheduler.add_job(
        send_digest,
        "interval",
        minutes=5,
        id="digest",
        kwargs={"recipient": "ops@example.com"},
        misfire_grace_time=30,
        coalesce=True,
        max_instances=1,
        replace_existing=True,
    )
    scheduler.add_job(
        clean_folder,
        "cron",
        day_of_week="mon-fri",
        hour=3,
        minute=15,
        timezone="Europe/Paris",
        jitter=60,
        id="cleanup",
        kwargs={"folder": "/var/tmp/app"},
        replace_existing=True,
    )
    scheduler.add_job(
        remind,
        "date",
        run_date=datetime(2030, 1, 7, 9, 0, tzinfo=timezone.utc),
        id="remind-42",
        kwargs={"user_id": 42},
        replace_existing=True,
    )


# --8<-- [end:jobs]


if __name__ == "__main__":
    from apscheduler.jobstores.redis import RedisJobStore  # type: ignore[import-untyped]
    from apscheduler.schedulers.blocking import BlockingScheduler  # type: ignore[import-untyped]

    scheduler = BlockingScheduler(jobstores={"default": RedisJobStore(host="localhost")})
    add_jobs(scheduler)
    scheduler.start()
