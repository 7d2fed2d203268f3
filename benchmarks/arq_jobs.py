"""Raw arq 0.28 benchmark functions and worker settings: ``arq benchmarks.arq_jobs.WorkerSettings``.

- ``noop(task, occurrence_ms)``: a one-time job (A, B).
- ``tick(task, occurrence_ms, interval_ms, catch_up)``: recurring work the usual arq way
  for tasks added at run time (arq's cron jobs are fixed in the worker settings and cannot
  be added dynamically): the job re-enqueues its next occurrence itself, with
  ``_defer_until`` = occurrence + interval and ``_job_id = "{task}:{next occurrence ms}"``
  so that an occurrence is queued once. With ``catch_up`` (recovery, E) the next
  occurrence skips to the first grid point after now, like cml-jobs' ``coalesce=True``.

Worker settings are arq's defaults (``max_jobs=10``, ``poll_delay=0.5``,
``keep_result=3600``) except the queue and Redis, read from ``BENCH_ARQ_*``.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from typing import Any, ClassVar

from arq.connections import RedisSettings

from benchmarks.recorder import now_ms, record


async def noop(ctx: dict[str, Any], task: str, occurrence_ms: int) -> None:
    record(task, occurrence_ms, now_ms())


async def tick(
    ctx: dict[str, Any], task: str, occurrence_ms: int, interval_ms: int, catch_up: bool
) -> None:
    start = now_ms()
    record(task, occurrence_ms, start)
    following = occurrence_ms + interval_ms
    if catch_up and following <= start:
        following += ((start - following) // interval_ms + 1) * interval_ms
    await ctx["redis"].enqueue_job(
        "tick",
        task,
        following,
        interval_ms,
        catch_up,
        _job_id=f"{task}:{following}",
        _defer_until=datetime.fromtimestamp(following / 1000, timezone.utc),
        _queue_name=WorkerSettings.queue_name,
    )


class WorkerSettings:
    functions: ClassVar[list[Any]] = [noop, tick]
    redis_settings = RedisSettings.from_dsn(
        os.environ.get("BENCH_ARQ_REDIS_URL", "redis://127.0.0.1:6379/14")
    )
    queue_name = os.environ.get("BENCH_ARQ_QUEUE", "bench:arq:queue")
    max_jobs = int(os.environ.get("BENCH_ARQ_MAX_JOBS", "10"))
