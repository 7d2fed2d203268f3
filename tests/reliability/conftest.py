"""Fixtures shared by the reliability scenarios: a ``redis-server`` of the test's own on a
free port (stoppable, restartable, with or without AOF), clients, worker fleets, and the
helpers that turn recorded runs into figures.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from cml_jobs import BackgroundTaskScheduler
from tests.workers import WorkerFleet

INTERVAL_MS = 1000
PREFIX = "rel:"

needs_redis_server = pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="needs redis-server"
)


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
        self.process = subprocess.Popen(
            self._args(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        return self.process

    async def start(self, timeout: float = 10) -> None:
        """Start the server and wait until it answers PING (and has loaded its AOF)."""
        process = self._spawn()
        client = aioredis.Redis.from_url(self.url, socket_connect_timeout=1)
        try:
            async with asyncio.timeout(timeout):
                while True:
                    assert process.poll() is None, "redis-server exited on start"
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


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Any]:
    servers: list[RedisServer] = []

    def make(persist: bool = False) -> RedisServer:
        server = RedisServer(_free_port(), tmp_path if persist else None)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.kill()


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
        if workers.processes:
            workers.stop(signal.SIGKILL)


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
    """Watch the workers for ``seconds``; fail (with stderr) the moment one exits."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        workers.check_alive()
        await asyncio.sleep(0.1)


async def wait_for_record(
    workers: WorkerFleet, client: aioredis.Redis, task: str, timeout: float, after_ms: int = 0
) -> dict[str, int]:
    async with asyncio.timeout(timeout):
        while True:
            workers.check_alive()
            for record in await workers.records(client):
                if record["task"] == task and record["end"] > after_ms:
                    return record
            await asyncio.sleep(0.05)
