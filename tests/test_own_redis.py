"""Against a ``redis-server`` this module starts for itself, on a free TCP port and a unix
socket: ``unix://`` URLs (README: ``CML_JOBS_REDIS_URL`` takes ``redis://``, ``rediss://``,
``unix://``) and ``python -m cml_jobs demo --redis-url ...``.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from cml_jobs import BackgroundTaskScheduler, EventKind, RecurrentTaskDescriptor
from tests.workers import ROOT, fleet

CLI = Path(sys.executable).with_name("cml-jobs")


@dataclass(frozen=True)
class OwnRedis:
    """A redis-server of this module's own."""

    port: int
    socket: Path

    def unix_url(self, db: int = 0) -> str:
        return f"unix://{self.socket}?db={db}"

    def tcp_url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnRedis]:
    """redis-server on a free port and a unix socket, no persistence; stopped afterwards."""
    server = shutil.which("redis-server")
    assert server is not None, "redis-server is not installed (apt-get install redis-server)"
    directory = tmp_path_factory.mktemp("redis")
    own = OwnRedis(_free_port(), directory / "redis.sock")
    args = [server, "--port", str(own.port), "--bind", "127.0.0.1", "--unixsocket"]
    args += [str(own.socket), "--unixsocketperm", "700", "--save", "", "--appendonly", "no"]
    args += ["--dir", str(directory)]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(unix_socket_path=str(own.socket), socket_connect_timeout=1)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert process.poll() is None, "redis-server exited at start"
            try:
                if client.ping():
                    break
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                assert time.monotonic() < deadline, "redis-server did not answer within 20 s"
                time.sleep(0.05)
        yield own
    finally:
        client.close()
        process.kill()
        process.wait(10)


@pytest.fixture
async def unix_client(own_redis: OwnRedis) -> AsyncIterator[aioredis.Redis]:
    """A client of the own server's database 1, through the socket."""
    client = aioredis.Redis.from_url(own_redis.unix_url(db=1))
    yield client
    await client.aclose()


async def test_an_app_with_an_in_app_worker_runs_tasks_over_a_unix_socket(
    own_redis: OwnRedis, unix_client: aioredis.Redis
) -> None:
    """redis_url='unix://...?db=1': tasks are stored in that database and run by the
    in-app worker."""
    scheduler = BackgroundTaskScheduler.configure(
        redis_url=own_redis.unix_url(db=1),
        modules=["tests.fixtures.behaviour_jobs"],
        run_worker=True,
        key_prefix="unix-app:",
        queue_name="unix-app:queue",
        poll_interval=timedelta(milliseconds=100),
    )
    async with scheduler:
        events = scheduler.events()
        succeeded = 0
        await scheduler.bus.schedule_task(
            RecurrentTaskDescriptor(id="over-socket", name="ScriptedJob", interval=0.2)
        )
        async with asyncio.timeout(30):
            async for event in events:
                succeeded += event.kind is EventKind.SUCCEEDED
                if succeeded == 2:
                    break
        task = await scheduler.bus.get_task("over-socket")
        assert task.counts.get("succeeded", 0) >= 2
        assert await unix_client.exists("unix-app:task:over-socket")
        await scheduler.bus.cancel_task("over-socket")
    other_db = aioredis.Redis.from_url(own_redis.unix_url(db=0))
    try:
        assert await other_db.keys("unix-app:*") == []
    finally:
        await other_db.aclose()


async def test_a_worker_process_and_the_health_check_reach_redis_over_a_unix_socket(
    own_redis: OwnRedis, unix_client: aioredis.Redis
) -> None:
    """CML_JOBS_REDIS_URL=unix://...: the worker runs a task, its heartbeat thread keeps a
    4 s run's 3 s lease (one start, never re-run), and cml-jobs check reports it healthy."""
    url, prefix = own_redis.unix_url(db=1), "unix-worker:"
    scheduler = BackgroundTaskScheduler.configure(
        redis_url=url,
        modules=["tests.fixtures.recording"],
        key_prefix=prefix,
        queue_name=f"{prefix}queue",
    )
    async with scheduler:
        with fleet(url, prefix) as workers:  # lease 3 s
            workers.start(1)
            await workers.wait_ready(unix_client)
            await scheduler.bus.schedule_task(
                RecurrentTaskDescriptor(
                    id="long",
                    name="RecordingJob",
                    interval=3600,
                    start_at=scheduler.clock.now() + timedelta(seconds=1),
                    data={"sleep": 4, "stop_after": 1},
                )
            )
            async with asyncio.timeout(60):
                while not await workers.records(unix_client):
                    workers.check_alive()
                    await asyncio.sleep(0.05)
            check = await asyncio.to_thread(
                subprocess.run,
                [
                    str(CLI),
                    "check",
                    "--redis-url",
                    url,
                    "--key-prefix",
                    prefix,
                    *("--queue", workers.queue),
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert workers.stop() == [0]
    starts = await workers.starts(unix_client)
    assert [(s["task"], s["attempt"]) for s in starts] == [("long", 1)]
    assert check.returncode == 0, check.stdout + check.stderr
    assert "redis: ok" in check.stdout and "workers: alive" in check.stdout


def test_the_demo_runs_against_a_real_redis(own_redis: OwnRedis) -> None:
    """``python -m cml_jobs demo --redis-url redis://...``: each of the three demo tasks
    succeeds at least once and none fails; exit 0."""
    url = own_redis.tcp_url(2)
    result = subprocess.run(
        [sys.executable, "-m", "cml_jobs", "demo", "--seconds", "8", "--redis-url", url],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    summary = result.stdout.split("summary after", 1)[1].splitlines()[1:]
    assert [line.split()[0] for line in summary] == ["heartbeat", "cleanup", "report"]
    for line in summary:
        words = line.split()
        assert int(words[1]) >= 1 and words[2:5] == ["run(s)", "succeeded,", "0"], line
    with redis.Redis(port=own_redis.port, db=2) as client:
        assert client.keys("cml-demo:*"), "the demo stored nothing in the Redis it was given"
