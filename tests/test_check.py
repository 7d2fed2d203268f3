"""Health checks: ``cml-jobs check`` (and ``python -m cml_jobs check``), ``arq --check``."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from cml_jobs import RecurrentTaskDescriptor
from cml_jobs._descriptors import encode_descriptor
from cml_jobs.stores import NewTask, TaskState
from cml_jobs.stores.redis import RedisScheduleStore
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


def _check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLI), "check", *args], capture_output=True, text=True, timeout=60, cwd=ROOT
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
