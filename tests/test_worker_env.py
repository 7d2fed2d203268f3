"""What the CML_JOBS_* variables change in a real ``arq cml_jobs.WorkerSettings`` process.

tests/test_settings.py checks that each variable is read; these tests start worker
processes with some of them set and check the behaviour the README promises. Every wait
is for a condition, under a deadline.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any, TypeVar

import pytest
import redis.asyncio as aioredis

from cml_jobs import BackgroundTaskScheduler, RecurrentTaskDescriptor, TaskNotFoundError
from tests.workers import WorkerFleet, fleet

pytestmark = pytest.mark.redis

T = TypeVar("T")


@asynccontextmanager
async def app(
    redis_url: str, prefix: str, **settings: Any
) -> AsyncIterator[BackgroundTaskScheduler]:
    """An app process's scheduler on the test's Redis: it schedules, the workers run."""
    scheduler = BackgroundTaskScheduler.configure(
        redis_url=redis_url,
        modules=["tests.fixtures.recording", "tests.fixtures.behaviour_jobs"],
        key_prefix=prefix,
        queue_name=f"{prefix}queue",
        **settings,
    )
    async with scheduler:
        yield scheduler


async def until(
    workers: WorkerFleet, check: Callable[[], Awaitable[T | None]], timeout: float = 60
) -> T:
    """Poll ``check`` until it returns something, failing if a worker exits meanwhile."""
    async with asyncio.timeout(timeout):
        while True:
            workers.check_alive()
            found = await check()
            if found is not None:
                return found
            await asyncio.sleep(0.05)


def most_at_once(records: list[dict[str, Any]]) -> int:
    """The most runs that were going on at one moment, from their start and end times."""
    return max(sum(r["start"] <= s["start"] < r["end"] for r in records) for s in records)


async def test_a_worker_runs_no_more_than_max_jobs_at_once_and_claims_in_batches_of_batch_size(
    redis_client: aioredis.Redis, redis_url: str, key_prefix: str
) -> None:
    """CML_JOBS_MAX_JOBS=2: five 1 s runs due together never overlap more than two at a
    time; CML_JOBS_BATCH_SIZE=1 still claims every one of them, once."""
    tasks = 5
    async with app(redis_url, key_prefix) as scheduler:
        with fleet(
            redis_url, key_prefix, CML_JOBS_MAX_JOBS="2", CML_JOBS_BATCH_SIZE="1"
        ) as workers:
            workers.start(1)
            await workers.wait_ready(redis_client)
            start_at = scheduler.clock.now() + timedelta(seconds=2)
            for n in range(tasks):
                info = await scheduler.bus.schedule_task(
                    RecurrentTaskDescriptor(
                        id=f"busy-{n}",
                        name="RecordingJob",
                        interval=3600,
                        start_at=start_at,
                        data={"sleep": 1.0, "stop_after": 1},
                    )
                )
                assert info.next_run_time == start_at.replace(
                    microsecond=start_at.microsecond // 1000 * 1000
                )

            async def all_ran() -> list[dict[str, Any]] | None:
                records = await workers.records(redis_client)
                return records if len(records) >= tasks else None

            records = await until(workers, all_ran)
            assert workers.stop() == [0]
    assert Counter(r["task"] for r in records) == {f"busy-{n}": 1 for n in range(tasks)}
    assert most_at_once(records) <= 2


async def test_a_worker_parks_a_task_of_a_job_it_lacks_after_unknown_job_grace(
    redis_client: aioredis.Redis, redis_url: str, key_prefix: str
) -> None:
    """CML_JOBS_UNKNOWN_JOB_GRACE=1: a task whose job no worker has is parked, with a reason
    naming the job, instead of waiting the default five minutes."""
    async with app(redis_url, key_prefix) as scheduler:
        with fleet(redis_url, key_prefix, CML_JOBS_UNKNOWN_JOB_GRACE="1") as workers:
            workers.start(1)  # scans tests.fixtures.recording only: no ScriptedJob
            await workers.wait_ready(redis_client)
            await scheduler.bus.schedule_task(
                RecurrentTaskDescriptor(id="newer", name="ScriptedJob", interval=1)
            )

            async def parked() -> str | None:
                return (await scheduler.bus.get_task("newer")).parked_reason

            reason = await until(workers, parked)
            assert workers.stop() == [0]
    assert "'ScriptedJob'" in reason and "no worker has run job" in reason


async def _values(client: aioredis.Redis, prefix: str) -> str:
    """Every value stored under ``prefix``, as one text (hashes, strings, sorted sets, streams)."""
    found: list[Any] = []
    async for key in client.scan_iter(match=f"{prefix}*", count=500):
        kind = (await client.type(key)).decode()
        if kind == "hash":
            found.append(await client.hgetall(key))
        elif kind == "string":
            found.append(await client.get(key))
        elif kind == "zset":
            found.append(await client.zrange(key, 0, -1))
        elif kind == "list":
            found.append(await client.lrange(key, 0, -1))
        elif kind == "stream":
            found.append(await client.xrange(key))
    return repr(found)


async def test_a_worker_with_a_signing_key_runs_signed_tasks_and_parks_unsigned_ones(
    redis_client: aioredis.Redis, redis_url: str, key_prefix: str
) -> None:
    """CML_JOBS_SIGNING_KEY: a task the app signed with the same key runs; one written
    without the key is parked with the reason and never run; the key is not in Redis."""
    key = "k3y-shared-by-app-and-workers"
    async with (
        app(redis_url, key_prefix, signing_key=key) as signing,
        app(redis_url, key_prefix) as not_signing,
    ):
        with fleet(redis_url, key_prefix, CML_JOBS_SIGNING_KEY=key) as workers:
            workers.start(1)
            await workers.wait_ready(redis_client)
            await signing.bus.schedule_task(
                RecurrentTaskDescriptor(
                    id="signed", name="RecordingJob", interval=1, data={"stop_after": 2}
                )
            )
            await not_signing.bus.schedule_task(
                RecurrentTaskDescriptor(id="unsigned", name="RecordingJob", interval=1)
            )

            async def signed_ended_and_unsigned_parked() -> str | None:
                try:
                    await signing.bus.get_task("signed")  # ends after its second run
                    return None
                except TaskNotFoundError:
                    return (await signing.bus.get_task("unsigned")).parked_reason

            reason = await until(workers, signed_ended_and_unsigned_parked)
            stored = await _values(redis_client, key_prefix)
            assert workers.stop() == [0]
    assert "signature does not match" in reason
    starts = Counter(s["task"] for s in await workers.starts(redis_client))
    assert starts == {"signed": 2}
    assert key not in stored
