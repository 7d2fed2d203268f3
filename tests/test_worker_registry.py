"""The worker registry, ``cml-jobs check`` on workers and parked tasks, and the run log line
a worker writes by default."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
from datetime import datetime, timedelta, timezone

import pytest
import redis.asyncio as aioredis

from cml_jobs import BackgroundTaskScheduler, RecurrentTaskDescriptor
from cml_jobs._descriptors import encode_descriptor
from cml_jobs.stores import Decision, NewTask
from cml_jobs.stores.redis import RedisScheduleStore
from tests.test_check import CLI
from tests.workers import ROOT, fleet, until

FAST = {"poll_interval": timedelta(milliseconds=50)}


async def test_an_in_app_worker_lists_itself_while_it_runs() -> None:
    """memory://: the app's own worker is in list_workers, with its pid and capacity."""
    app = BackgroundTaskScheduler.configure(run_worker=True, max_jobs=7)
    async with app:
        [worker] = await app.list_workers()
        assert (worker.pid, worker.max_jobs, worker.running) == (os.getpid(), 7, 0)
        assert worker.id == app.runtime.executor.worker
        assert worker.started_at <= worker.heartbeat_at < worker.expires_at


@pytest.mark.redis
async def test_a_worker_is_listed_while_running_and_gone_after_a_clean_stop(
    redis_url: str, key_prefix: str
) -> None:
    """An app without a worker sees another process's worker register, and leave."""
    common = {"redis_url": redis_url, "key_prefix": key_prefix, **FAST}
    observer = BackgroundTaskScheduler.configure(run_worker=False, **common)
    worker = BackgroundTaskScheduler.configure(run_worker=True, **common)
    async with observer:
        assert await observer.list_workers() == []
        async with worker:
            [seen] = await observer.list_workers()
            assert seen.id == worker.runtime.executor.worker
        assert await observer.list_workers() == []


@pytest.mark.redis
async def test_a_killed_worker_drops_out_once_its_heartbeat_expires(
    redis_client: aioredis.Redis, redis_url: str, key_prefix: str
) -> None:
    """A worker process killed with SIGKILL cannot leave; it drops out after one lease."""
    observer = BackgroundTaskScheduler.configure(redis_url=redis_url, key_prefix=key_prefix)
    with fleet(redis_url, key_prefix) as workers:
        [process] = workers.start(1)
        await workers.wait_ready()
        async with observer:

            async def listed() -> bool:
                return [w.pid for w in await observer.list_workers()] == [process.pid]

            await until(listed, "the worker registered")
            process.send_signal(signal.SIGKILL)
            workers.forget(process)
            killed_at = datetime.now(timezone.utc)

            async def gone() -> bool:
                return await observer.list_workers() == []

            await until(gone, "the killed worker dropped out")
            # Not before its registration expired: one lease (3 s here) after its last beat.
            assert datetime.now(timezone.utc) - killed_at > timedelta(seconds=1)


@pytest.mark.postgres
async def test_workers_on_the_postgres_store_are_listed_and_leave(postgres_url: str) -> None:
    """On PostgreSQL as on Redis: an app sees another app's worker register, and leave."""
    observer = BackgroundTaskScheduler.configure(store_url=postgres_url, run_worker=False)
    worker = BackgroundTaskScheduler.configure(store_url=postgres_url, run_worker=True, **FAST)
    async with observer:
        assert await observer.list_workers() == []
        async with worker:
            [seen] = await observer.list_workers()
            assert (seen.id, seen.pid) == (worker.runtime.executor.worker, os.getpid())
        assert await observer.list_workers() == []


def _check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLI), "check", *args], capture_output=True, text=True, timeout=60, cwd=ROOT
    )


@pytest.mark.redis
async def test_check_fails_with_fewer_workers_than_min_workers(
    redis_url: str, key_prefix: str
) -> None:
    """One registered worker: --min-workers 1 passes, --min-workers 2 exits 1."""
    worker = BackgroundTaskScheduler.configure(
        redis_url=redis_url, key_prefix=key_prefix, run_worker=True
    )
    args = ("--redis-url", redis_url, "--key-prefix", key_prefix, "--no-worker")
    async with worker:
        one, two = await asyncio.gather(
            asyncio.to_thread(_check, *args, "--min-workers", "1"),
            asyncio.to_thread(_check, *args, "--min-workers", "2"),
        )
    assert one.returncode == 0 and "registered workers: 1\n" in one.stdout, one.stdout
    assert worker.settings.key_prefix == key_prefix
    assert two.returncode == 1, two.stdout
    assert "registered workers: 1, FEWER than --min-workers 2" in two.stdout


@pytest.mark.redis
async def test_check_fails_with_parked_tasks_and_names_them(
    redis_client: aioredis.Redis, redis_url: str, key_prefix: str
) -> None:
    """A parked task makes check exit 1, naming it and its reason."""
    store = RedisScheduleStore(redis_client, prefix=key_prefix)
    now = datetime.now(timezone.utc) + timedelta(hours=1)
    descriptor = RecurrentTaskDescriptor(id="stuck", name="GoneJob", interval=60)
    await store.add(NewTask("stuck", encode_descriptor(descriptor), now, now), replace=False)
    await store.claim(
        [Decision("stuck", now, None, None, park_reason="no job 'GoneJob'")], lease_until=now
    )
    result = await asyncio.to_thread(
        _check, "--redis-url", redis_url, "--key-prefix", key_prefix, "--no-worker"
    )
    assert result.returncode == 1, result.stdout
    assert "parked tasks: 1" in result.stdout and "  stuck: no job 'GoneJob'" in result.stdout


@pytest.mark.redis
async def test_an_arq_worker_logs_one_line_per_run_by_default(
    redis_client: aioredis.Redis, redis_url: str, key_prefix: str
) -> None:
    """A worker started with arq's own logging prints an INFO line per run outcome, with
    its time, task, occurrence, outcome, duration, lateness and worker."""
    app = BackgroundTaskScheduler.configure(
        redis_url=redis_url, key_prefix=key_prefix, modules=["tests.fixtures.recording"]
    )
    with fleet(redis_url, key_prefix) as workers:
        workers.log_dict = None
        [process] = workers.start(1)
        await workers.wait_ready()
        async with app:
            await app.bus.schedule_task(
                RecurrentTaskDescriptor(id="logged", name="RecordingJob", interval=0.5)
            )
            line = re.compile(
                r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO cml_jobs\.runs: task=logged "
                r"job=RecordingJob occurrence=\S+ attempt=1 duration=\d+\.\d{3}s "
                rf"lateness=-?\d+\.\d{{3}}s outcome=succeeded worker=\S+:{process.pid} ",
                re.M,
            )

            async def logged() -> bool:
                return bool(line.search(workers.stderr(process)))

            await workers.until(logged, "a run's log line")
            await app.bus.cancel_task("logged")
