"""APScheduler 3 benchmark job, and the one scheduler configuration that the harness and the
worker (``python -m benchmarks.aps_worker``) both build.

APScheduler 3 does not hand a job its scheduled run time, so the worker listens for
``EVENT_JOB_SUBMITTED`` and keeps each job's ``scheduled_run_times`` until the job's body
takes them. The scheduler dispatches that event inside the same event-loop callback that
submits the job, so before the job's coroutine first runs; and with
``misfire_grace_time=None`` the executor calls the body once per run time, in order. So
the body knows the occurrence it runs for, as cml-jobs' ``self.context.occurrence_at`` and
the arq job's argument tell theirs.

Settings, the same for every job: ``misfire_grace_time=None`` (a late run still runs, so
lateness is measured instead of turned into missed runs: APScheduler 3's default of 1 s
would drop every run more than a second late), ``coalesce=True`` and ``max_instances=1``
(APScheduler's defaults, and cml-jobs' too), UTC.
"""

from __future__ import annotations

from datetime import timezone
from typing import Any

from apscheduler.events import EVENT_JOB_SUBMITTED, JobSubmissionEvent
from apscheduler.jobstores.redis import RedisJobStore
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from redis.connection import parse_url

from benchmarks.recorder import now_ms, record

JOB_DEFAULTS = {"misfire_grace_time": None, "coalesce": True, "max_instances": 1}

_due: dict[str, list[int]] = {}  # job id -> scheduled run times (ms) submitted, not yet run


def _submitted(event: JobSubmissionEvent) -> None:
    times = _due.setdefault(event.job_id, [])
    times.extend(round(t.timestamp() * 1000) for t in event.scheduled_run_times)


async def noop(task: str) -> None:
    """The job of every task (a date trigger for one-time tasks, an interval trigger for
    recurrent ones); its id is the task's."""
    start = now_ms()
    times = _due[task]
    occurrence = times.pop(0)
    if not times:
        del _due[task]
    record(task, occurrence, start)


def scheduler(redis_url: str, prefix: str, *, listen: bool) -> AsyncIOScheduler:
    """An ``AsyncIOScheduler`` over a ``RedisJobStore`` whose two keys (a hash of pickled
    jobs, a sorted set of next run times) are under ``prefix``. ``listen``: the worker's,
    which runs jobs and so needs their run times."""
    store = RedisJobStore(
        jobs_key=f"{prefix}jobs", run_times_key=f"{prefix}run_times", **parse_url(redis_url)
    )
    built = AsyncIOScheduler(
        jobstores={"default": store}, job_defaults=dict(JOB_DEFAULTS), timezone=timezone.utc
    )
    if listen:
        built.add_listener(_submitted, EVENT_JOB_SUBMITTED)
    return built


def job_options(task: str) -> dict[str, Any]:
    """``add_job`` arguments common to every task: the job, its id, its settings."""
    return {
        "func": f"{__name__}:noop",
        "args": (task,),
        "id": task,
        "replace_existing": False,
        **JOB_DEFAULTS,
    }
