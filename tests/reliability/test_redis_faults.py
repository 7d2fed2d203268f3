"""Redis faults under real ``arq cml_jobs.WorkerSettings`` processes.

Each test runs its own ``redis-server`` on a free port, stops it and starts it again on
the same port, and checks that no worker process exits and that every occurrence of a
1 s recurrent task runs at most once (and on the grid again once Redis is back).
Every wait is bounded; assertions are figures computed from the runs the jobs recorded.
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

from cml_jobs import BackgroundTaskScheduler, Outcome, RecurrentTaskDescriptor
from cml_jobs._timing import to_ms
from tests.workers import WorkerFleet

pytestmark = [
    pytest.mark.reliability,
    pytest.mark.redis,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server"),
]

INTERVAL_MS = 1000
PREFIX = "rel:"


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

    def make(url: str) -> WorkerFleet:
        workers = WorkerFleet(redis_url=url, prefix=PREFIX)
        fleets.append(workers)
        return workers

    yield make
    for workers in fleets:
        if workers.processes:
            workers.stop(signal.SIGKILL)


def _app(url: str) -> BackgroundTaskScheduler:
    return BackgroundTaskScheduler.configure(
        redis_url=url,
        modules=["tests.fixtures.recording"],
        key_prefix=PREFIX,
        queue_name=f"{PREFIX}queue",
    )


def _per_occurrence(records: list[dict[str, int]], task: str) -> Counter[int]:
    return Counter(r["occurrence"] for r in records if r["task"] == task)


def _alive(workers: WorkerFleet) -> list[int | None]:
    return [process.poll() for process in workers.processes]


async def _stay_alive(workers: WorkerFleet, seconds: float) -> None:
    """Watch the workers for ``seconds``; fail (with stderr) the moment one exits."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        workers._check_alive()
        await asyncio.sleep(0.1)


async def _wait_for_record(
    workers: WorkerFleet, client: aioredis.Redis, task: str, timeout: float, after_ms: int = 0
) -> dict[str, int]:
    async with asyncio.timeout(timeout):
        while True:
            workers._check_alive()
            for record in await workers.records(client):
                if record["task"] == task and record["end"] > after_ms:
                    return record
            await asyncio.sleep(0.05)


async def test_workers_started_before_redis_wait_for_it_and_run_once_per_occurrence(
    server_factory: Any, client_factory: Any, workers_factory: Any
) -> None:
    """Redis is down when two workers start and comes up 6 s later: no worker exits, the
    first run of a 1 s task scheduled right then comes within a few seconds, once."""
    server: RedisServer = server_factory()
    workers: WorkerFleet = workers_factory(server.url)
    workers.start(2)
    await _stay_alive(workers, 6.0)  # Redis is not there yet
    assert _alive(workers) == [None, None]

    await server.start()
    up_at = int(time.time() * 1000)
    client = client_factory(server.url)
    async with _app(server.url) as app:
        info = await app.bus.schedule_task(
            RecurrentTaskDescriptor(id="late", name="RecordingJob", interval=1)
        )
        first = to_ms(info.next_run_time)  # type: ignore[arg-type]
        record = await _wait_for_record(workers, client, "late", timeout=8.0)
        first_run_delay = (record["end"] - up_at) / 1000
        await _stay_alive(workers, 5.0)
        await app.bus.cancel_task("late")
    assert _alive(workers) == [None, None]
    assert workers.stop() == [0, 0]

    runs = _per_occurrence(await workers.records(client), "late")
    print(f"first run {first_run_delay:.2f} s after Redis was up; {len(runs)} occurrences")
    assert first_run_delay < 5.0, f"first run {first_run_delay:.2f} s after Redis came back"
    assert set(runs.values()) == {1}, f"duplicates: {[o for o, n in runs.items() if n > 1]}"
    assert sorted(runs) == list(range(first, max(runs) + 1, INTERVAL_MS)), "missing occurrence"
    assert len(runs) >= 5


@pytest.mark.parametrize("stop_signal", [signal.SIGKILL, signal.SIGTERM], ids=["kill", "term"])
async def test_redis_outage_mid_run_loses_no_worker_and_runs_no_occurrence_twice(
    server_factory: Any, client_factory: Any, workers_factory: Any, stop_signal: int
) -> None:
    """Redis (AOF, fsync always) goes away for 7 s while two workers run a 1 s task: no
    worker exits; once Redis is back the task runs again on its grid, and no occurrence —
    before, during or after the outage — runs twice."""
    server: RedisServer = server_factory(persist=True)
    await server.start()
    client = client_factory(server.url)
    workers: WorkerFleet = workers_factory(server.url)
    workers.start(2)
    await workers.wait_ready(client)
    async with _app(server.url) as app:
        info = await app.bus.schedule_task(
            RecurrentTaskDescriptor(id="steady", name="RecordingJob", interval=1)
        )
    first = to_ms(info.next_run_time)  # type: ignore[arg-type]
    await _stay_alive(workers, 4.2)

    server.stop(stop_signal)
    down_at = int(time.time() * 1000)
    await _stay_alive(workers, 7.0)
    await server.start()
    up_at = int(time.time() * 1000)
    assert _alive(workers) == [None, None]

    resumed = await _wait_for_record(workers, client, "steady", timeout=8.0, after_ms=up_at)
    resume_delay = (resumed["end"] - up_at) / 1000
    await _stay_alive(workers, 5.0)
    async with _app(server.url) as app:
        steady = await app.bus.get_task("steady")
        await app.bus.cancel_task("steady")
    assert _alive(workers) == [None, None]
    assert workers.stop() == [0, 0]

    records = await workers.records(client)
    runs = _per_occurrence(records, "steady")
    before = sorted(o for o in runs if o < down_at)
    after = sorted(o for o in runs if o >= down_at)
    print(
        f"outage {(up_at - down_at) / 1000:.1f} s; resumed {resume_delay:.2f} s after; "
        f"{len(before)} occurrences before, {len(after)} from the outage on: "
        f"{[(o - first) // INTERVAL_MS for o in after]}"
    )
    assert set(runs.values()) == {1}, f"duplicates: {[o for o, n in runs.items() if n > 1]}"
    assert len(before) >= 3, "the task did not run before the outage"
    assert before == list(range(first, max(before) + 1, INTERVAL_MS)), "missing before outage"
    assert all((o - first) % INTERVAL_MS == 0 for o in runs), "an occurrence is off the grid"
    assert resume_delay < 5.0, f"resumed only {resume_delay:.2f} s after Redis came back"
    tail = [o for o in after if o > up_at]
    assert len(tail) >= 4, f"only {len(tail)} occurrences after Redis came back"
    assert tail == list(range(min(tail), max(tail) + 1, INTERVAL_MS)), "not resumed on the grid"
    assert after == list(range(min(after), max(after) + 1, INTERVAL_MS)), "a gap after resuming"
    gap = (min(after) - max(before)) // INTERVAL_MS - 1
    assert gap >= 4, f"only {gap} occurrences fell in a 7 s outage"
    assert steady.counts.get(Outcome.MISSED.value) == gap, f"missed not recorded: {steady.counts}"
    assert steady.counts.get(Outcome.SUCCEEDED.value, 0) >= len(runs) - 1, steady.counts
    assert Outcome.FAILED.value not in steady.counts, f"a run failed: {steady.counts}"
