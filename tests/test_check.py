"""Health checks: ``cml-jobs check`` (and ``python -m cml_jobs check``), ``arq --check``."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from cml_jobs import BackgroundTaskScheduler, RecurrentTaskDescriptor
from cml_jobs._descriptors import encode_descriptor
from cml_jobs.stores import NewTask, TaskState
from cml_jobs.stores.redis import RedisScheduleStore
from cml_jobs.testing import ManualClock
from cml_jobs.worker._health import DEFAULT_GRACE, overdue_tasks
from tests.workers import ROOT, fleet

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=timezone.utc)
CLI = Path(sys.executable).with_name("cml-jobs")


def _descriptor(task_id: str, grace: float | None = None) -> str:
    return encode_descriptor(
        RecurrentTaskDescriptor(
            id=task_id, name="RecordingJob", interval=60, misfire_grace_time=grace
        )
    )


def _state(task_id: str, late: float, grace: float | None = None, **flags: object) -> TaskState:
    due_at = NOW - timedelta(seconds=late)
    return TaskState(task_id, _descriptor(task_id, grace), due_at, **flags)  # type: ignore[arg-type]


def test_a_task_counts_as_overdue_only_past_its_own_grace() -> None:
    """Its misfire_grace_time, else the default; paused and parked tasks never count."""
    states = [
        _state("on-time", late=0),
        _state("within-default", late=DEFAULT_GRACE.total_seconds() - 1),
        _state("past-default", late=DEFAULT_GRACE.total_seconds() + 1),
        _state("within-own", late=200, grace=300),
        _state("past-own", late=11, grace=10),
        _state("paused", late=3600, paused=True),
        _state("parked", late=3600, parked_reason="gone"),
    ]
    found = overdue_tasks(states, NOW)
    assert [late.task_id for late in found] == ["past-default", "past-own"]
    assert found[1].grace == timedelta(seconds=10)
    assert found[1].late_by == timedelta(seconds=11)


def _check(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLI), "check", *args], capture_output=True, text=True, timeout=60, cwd=ROOT, env=env
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_check_fails_when_redis_is_down() -> None:
    """Nothing listening on the Redis port: exit 1, and the report says so."""
    result = _check("--redis-url", f"redis://127.0.0.1:{_free_port()}/0")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "redis: UNREACHABLE" in result.stdout


@pytest.mark.redis
async def test_check_passes_with_a_live_worker_and_arq_check_agrees(
    redis_client: aioredis.Redis, redis_url: str, key_prefix: str
) -> None:
    """A worker polling the queue and nothing overdue: cml-jobs check and arq --check exit 0."""
    with fleet(redis_url, key_prefix) as workers:
        workers.start(1)
        await workers.wait_ready(redis_client)
        args = ("--redis-url", redis_url, "--key-prefix", key_prefix, "--queue", workers.queue)
        result = await asyncio.to_thread(_check, *args)
        arq = await asyncio.to_thread(
            subprocess.run,
            [str(CLI.with_name("arq")), "--check", "cml_jobs.WorkerSettings"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
            env=workers.env(),
        )
        workers.stop()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "workers: alive" in result.stdout and "healthy" in result.stdout
    assert arq.returncode == 0, arq.stdout + arq.stderr


@pytest.mark.redis
async def test_check_fails_without_a_worker(redis_url: str, key_prefix: str) -> None:
    """No worker has polled the queue lately: exit 1."""
    result = await asyncio.to_thread(
        _check, "--redis-url", redis_url, "--key-prefix", key_prefix, "--queue", f"{key_prefix}q"
    )
    assert result.returncode == 1
    assert "workers: NONE" in result.stdout


@pytest.mark.redis
async def test_check_fails_when_a_task_is_overdue_beyond_its_grace(
    redis_client: aioredis.Redis, redis_url: str, key_prefix: str
) -> None:
    """A task 10 minutes past due with a 30 s grace: exit 1, naming the task."""
    store = RedisScheduleStore(redis_client, prefix=key_prefix)
    due = datetime.now(timezone.utc) - timedelta(minutes=10)
    await store.add(NewTask("stuck", _descriptor("stuck", grace=30), due, due), replace=False)
    args = ("--redis-url", redis_url, "--key-prefix", key_prefix, "--queue", f"{key_prefix}q")
    result = await asyncio.to_thread(_check, *args, "--no-worker")
    assert result.returncode == 1, result.stdout
    assert "overdue tasks: 1" in result.stdout and "stuck:" in result.stdout
    await store.remove("stuck")
    healthy = await asyncio.to_thread(_check, *args, "--no-worker")
    assert healthy.returncode == 0, healthy.stdout


def test_python_dash_m_cml_jobs_check_is_the_same_command() -> None:
    """``python -m cml_jobs check --help`` documents the probe."""
    result = subprocess.run(
        [sys.executable, "-m", "cml_jobs", "check", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0 and "liveness probe" in result.stdout


async def _scheduled_long_ago(
    redis_url: str, key_prefix: str, store_url: str | None = None, **tasks: float | None
) -> None:
    """Schedule one task per keyword (id -> its misfire_grace_time) from an app whose clock
    stood 10 minutes back, with no worker: each is now 9 minutes overdue."""
    clock = ManualClock(datetime.now(timezone.utc) - timedelta(minutes=10))
    app = BackgroundTaskScheduler.configure(
        redis_url=redis_url,
        modules=["tests.fixtures.recording"],
        key_prefix=key_prefix,
        clock=clock,
        store_url=store_url,
    )
    async with app:
        for task_id, grace in tasks.items():
            await app.bus.schedule_task(
                RecurrentTaskDescriptor(
                    id=task_id, name="RecordingJob", interval=60, misfire_grace_time=grace
                )
            )


@pytest.mark.redis
async def test_grace_sets_how_late_a_task_without_its_own_grace_may_be(
    redis_url: str, key_prefix: str
) -> None:
    """A task 9 min overdue with misfire_grace_time=None: overdue under the default 60 s
    and under --grace 300, not under --grace 600. A task with its own grace of 1 h is
    judged by that, whatever --grace says."""
    await _scheduled_long_ago(redis_url, key_prefix, no_grace=None, own_grace=3600)
    args = ("--redis-url", redis_url, "--key-prefix", key_prefix, "--no-worker")
    default, strict, lenient = await asyncio.gather(
        asyncio.to_thread(_check, *args),
        asyncio.to_thread(_check, *args, "--grace", "300"),
        asyncio.to_thread(_check, *args, "--grace", "600"),
    )
    assert default.returncode == 1 and "(grace 60 s)" in default.stdout, default.stdout
    assert strict.returncode == 1 and "(grace 300 s)" in strict.stdout, strict.stdout
    for result in (default, strict):
        assert "overdue tasks: 1" in result.stdout and "  no_grace: due " in result.stdout
    assert lenient.returncode == 0, lenient.stdout
    assert "overdue tasks: 0" in lenient.stdout and "healthy" in lenient.stdout


@pytest.mark.redis
async def test_check_reads_its_redis_prefix_and_queue_from_the_environment(
    redis_client: aioredis.Redis, redis_url: str, key_prefix: str
) -> None:
    """With no flags, cml-jobs check uses CML_JOBS_REDIS_URL, CML_JOBS_KEY_PREFIX and
    CML_JOBS_QUEUE; flags given anyway win over them."""
    await _scheduled_long_ago(redis_url, key_prefix, stuck=30)
    queue = f"{key_prefix}queue"
    await redis_client.set(f"{queue}:health-check", "a worker's line", px=16_000)
    env = {
        **os.environ,
        "CML_JOBS_REDIS_URL": redis_url,
        "CML_JOBS_KEY_PREFIX": key_prefix,
        "CML_JOBS_QUEUE": queue,
    }
    from_env = await asyncio.to_thread(_check, env=env)
    assert from_env.returncode == 1, from_env.stdout + from_env.stderr
    assert "workers: alive (a worker's line)" in from_env.stdout
    assert "overdue tasks: 1" in from_env.stdout and "  stuck: due " in from_env.stdout

    elsewhere = {**env, "CML_JOBS_REDIS_URL": f"redis://127.0.0.1:{_free_port()}/0"}
    flags = ("--redis-url", redis_url, "--key-prefix", f"{key_prefix}other:")
    overridden = await asyncio.to_thread(_check, *flags, env=elsewhere)
    assert overridden.returncode == 0, overridden.stdout + overridden.stderr
    assert "redis: ok" in overridden.stdout and "overdue tasks: 0" in overridden.stdout


def _arq_check(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLI.with_name("arq")), "--check", "cml_jobs.WorkerSettings"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
    )


@pytest.mark.redis
async def test_arq_check_fails_without_a_worker(redis_url: str, key_prefix: str) -> None:
    """``arq --check cml_jobs.WorkerSettings`` exits 1 when no worker polls the queue."""
    env = {**os.environ, "CML_JOBS_REDIS_URL": redis_url, "CML_JOBS_QUEUE": f"{key_prefix}q"}
    result = await asyncio.to_thread(_arq_check, env)
    assert result.returncode == 1, result.stdout + result.stderr


@pytest.mark.redis
async def test_a_worker_is_no_longer_seen_16_s_after_it_died(
    redis_client: aioredis.Redis, redis_url: str, key_prefix: str
) -> None:
    """A live worker's health-check key lives at most 16 s (it refreshes it every 15 s);
    after a kill -9 the key runs out, and cml-jobs check and arq --check both exit 1."""
    with fleet(redis_url, key_prefix) as workers:
        workers.start(1)
        await workers.wait_ready(redis_client)
        health_key = f"{workers.queue}:health-check"
        assert 0 < await redis_client.pttl(health_key) <= 16_000
        assert workers.stop(signal.SIGKILL) == [-signal.SIGKILL]
    async with asyncio.timeout(30):
        while True:
            if not await redis_client.exists(health_key):
                break
            await asyncio.sleep(0.2)
    args = ("--redis-url", redis_url, "--key-prefix", key_prefix, "--queue", workers.queue)
    check, arq = await asyncio.gather(
        asyncio.to_thread(_check, *args), asyncio.to_thread(_arq_check, workers.env())
    )
    assert check.returncode == 1 and "workers: NONE" in check.stdout, check.stdout
    assert arq.returncode == 1, arq.stdout + arq.stderr


@pytest.mark.redis
async def test_check_tells_damaged_data_and_parked_tasks_apart_from_an_unreachable_redis(
    redis_client: aioredis.Redis, redis_url: str, key_prefix: str
) -> None:
    """A task key holding a STRING, a task hash without a descriptor and a parked task:
    Redis is reported reachable, the two unreadable keys and the parked task are named
    (with its reason), and check exits 1; once they are gone it exits 0."""
    store = RedisScheduleStore(redis_client, prefix=key_prefix)
    due = datetime.now(timezone.utc) + timedelta(minutes=5)
    for task_id in ("fine", "stuck"):
        await store.add(NewTask(task_id, _descriptor(task_id), due, due), replace=False)
    await redis_client.hset(f"{key_prefix}task:stuck", "parked", "stored descriptor is invalid")
    await redis_client.set(f"{key_prefix}task:wrongtype", "not a hash")
    await redis_client.hset(f"{key_prefix}task:hollow", "due_at", "1")
    args = ("--redis-url", redis_url, "--key-prefix", key_prefix, "--no-worker")
    result = await asyncio.to_thread(_check, *args)
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert "redis: ok (reachable)" in out and "UNREACHABLE" not in out, out
    assert "data: 2 key(s) UNREADABLE" in out, out
    assert "task 'wrongtype': its key holds a string" in out, out
    assert "task 'hollow': has no descriptor" in out, out
    assert "parked tasks: 1\n  stuck: stored descriptor is invalid" in out, out
    assert "fine" not in out and out.rstrip().endswith("UNHEALTHY"), out
    # A liveness probe names them too, but passes: restarting a worker cannot fix them.
    probe = await asyncio.to_thread(_check, *args, "--liveness")
    assert probe.returncode == 0, probe.stdout + probe.stderr
    assert "task 'wrongtype'" in probe.stdout and "  stuck: " in probe.stdout
    await redis_client.delete(*(f"{key_prefix}task:{t}" for t in ("stuck", "wrongtype", "hollow")))
    healthy = await asyncio.to_thread(_check, *args)
    assert healthy.returncode == 0, healthy.stdout
    assert "data: readable" in healthy.stdout and "parked tasks: 0" in healthy.stdout


@pytest.mark.postgres
async def test_check_reads_the_tasks_from_the_postgres_store(
    redis_url: str, key_prefix: str, postgres_url: str
) -> None:
    """With CML_JOBS_STORE_URL naming PostgreSQL, the overdue tasks are read from there."""
    await _scheduled_long_ago(redis_url, key_prefix, store_url=postgres_url, stuck=30)
    env = {**os.environ, "CML_JOBS_REDIS_URL": redis_url, "CML_JOBS_STORE_URL": postgres_url}
    found = await asyncio.to_thread(_check, "--no-worker", env=env)
    assert found.returncode == 1, found.stdout + found.stderr
    assert "overdue tasks: 1" in found.stdout and "  stuck: due " in found.stdout
