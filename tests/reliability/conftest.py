"""Fixtures shared by the reliability scenarios: a ``redis-server`` of the test's own on a
free port (stoppable, restartable, with or without AOF), clients, worker fleets, and the
helpers that turn recorded runs into figures.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import IO, Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from cml_jobs import BackgroundTaskScheduler
from tests.ci import unavailable
from tests.workers import WorkerFleet

INTERVAL_MS = 1000
PREFIX = "rel:"
#: The oldest Redis cml-jobs supports (ACL users, TLS); any newer one is recognised.
MIN_REDIS = (6, 0)


def redis_server_version() -> tuple[int, ...] | None:
    """The version of the ``redis-server`` on PATH, or None when there is none."""
    if shutil.which("redis-server") is None:
        return None
    shown = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, check=False
    ).stdout
    found = re.search(r"\bv=(\d+)\.(\d+)\.(\d+)", shown)
    if found is None:
        raise AssertionError(f"cannot read the version of redis-server from {shown!r}")
    return tuple(int(part) for part in found.groups())


@pytest.fixture
def redis_server_binary() -> tuple[int, ...]:
    """A ``redis-server`` of at least ``MIN_REDIS`` on PATH; its version."""
    version = redis_server_version()
    if version is None:
        unavailable("needs redis-server on PATH (apt-get install redis-server)")
    if version < MIN_REDIS:
        shown = ".".join(map(str, version))
        unavailable(f"needs redis-server >= {MIN_REDIS[0]} (ACL users, TLS); found {shown}")
    return version


#: Tests that start a ``redis-server`` of their own.
needs_redis_server = pytest.mark.usefixtures("redis_server_binary")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A ``redis-server`` of the test's own, stoppable and restartable on the same port."""

    def __init__(self, port: int, persist_dir: Path | None = None) -> None:
        self.port = port
        self.persist_dir = persist_dir
        self.process: subprocess.Popen[bytes] | None = None
        self.output: IO[bytes] = tempfile.TemporaryFile()  # stdout and stderr, every start

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _args(self) -> list[str]:
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        if self.persist_dir is None:
            return [*args, "--appendonly", "no"]
        return [
            *args,
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--dir", str(self.persist_dir),
        ]  # fmt: skip

    def _spawn(self) -> subprocess.Popen[bytes]:
        assert self.process is None or self.process.poll() is not None, "already running"
        self.process = subprocess.Popen(self._args(), stdout=self.output, stderr=subprocess.STDOUT)
        return self.process

    def log(self) -> str:
        """What the server wrote so far (every start), for failure messages."""
        fd = self.output.fileno()
        return os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace")

    async def start(self, timeout: float = 30) -> None:
        """Start the server and wait until it answers PING (and has loaded its AOF)."""
        process = self._spawn()
        client = aioredis.Redis.from_url(self.url, socket_connect_timeout=1)
        try:
            async with asyncio.timeout(timeout):
                while True:
                    if process.poll() is not None:
                        raise AssertionError(f"redis-server exited on start:\n{self.log()[-2000:]}")
                    try:
                        if await client.ping():
                            return
                    except (RedisConnectionError, RedisTimeoutError, OSError):
                        pass
                    await asyncio.sleep(0.05)
        finally:
            await client.aclose()

    def stop(self, sig: int = signal.SIGKILL, timeout: float = 10) -> None:
        """Stop the server (SIGKILL: a crash; SIGTERM: a clean shutdown)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def close(self) -> None:
        """Kill the server and let go of its output."""
        self.kill()
        self.output.close()


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Any]:
    servers: list[RedisServer] = []

    def make(persist: bool = False) -> RedisServer:
        server = RedisServer(_free_port(), tmp_path if persist else None)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


@pytest.fixture
async def client_factory() -> AsyncIterator[Any]:
    clients: list[aioredis.Redis] = []

    def make(url: str) -> aioredis.Redis:
        client = aioredis.Redis.from_url(url, socket_connect_timeout=2)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


@pytest.fixture
def workers_factory() -> Iterator[Any]:
    fleets: list[WorkerFleet] = []

    def make(url: str, prefix: str = PREFIX, **kwargs: Any) -> WorkerFleet:
        workers = WorkerFleet(redis_url=url, prefix=prefix, **kwargs)
        fleets.append(workers)
        return workers

    yield make
    for workers in fleets:
        workers.stop(signal.SIGKILL)  # also lets go of the logs of workers already gone


def app_for(url: str, prefix: str = PREFIX, **settings: Any) -> BackgroundTaskScheduler:
    return BackgroundTaskScheduler.configure(
        redis_url=url,
        modules=["tests.fixtures.recording"],
        key_prefix=prefix,
        queue_name=f"{prefix}queue",
        **settings,
    )


def per_occurrence(records: list[dict[str, int]], task: str) -> Counter[int]:
    return Counter(r["occurrence"] for r in records if r["task"] == task)


def alive(workers: WorkerFleet) -> list[int | None]:
    return [process.poll() for process in workers.processes]


async def stay_alive(workers: WorkerFleet, seconds: float) -> None:
    """Let ``seconds`` pass while the workers keep running; fail (with stderr) the moment
    one exits. For the length of a fault the scenario sets (Redis down for 3 s), never to
    wait for something to happen: ``until`` does that."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        workers.check_alive()
        await asyncio.sleep(0.1)


async def wait_for_record(
    workers: WorkerFleet, client: aioredis.Redis, task: str, after_ms: int = 0
) -> dict[str, int]:
    """The first finished run of ``task`` that ended after ``after_ms``, once there is one."""

    async def found() -> dict[str, int] | None:
        records = await workers.records(client)
        return next((r for r in records if r["task"] == task and r["end"] > after_ms), None)

    return await workers.until(found, f"a run of {task!r} ending after {after_ms} ms")


async def wait_for_occurrences(
    workers: WorkerFleet, client: aioredis.Redis, task: str, count: int
) -> Counter[int]:
    """Runs per occurrence of ``task``, once at least ``count`` occurrences have run."""

    async def enough() -> Counter[int] | None:
        runs = per_occurrence(await workers.records(client), task)
        return runs if len(runs) >= count else None

    return await workers.until(enough, f"{count} occurrences of {task!r} ran")
