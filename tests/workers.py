"""Real worker processes for tests: ``arq cml_jobs.WorkerSettings`` in subprocesses."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parent.parent
ARQ = Path(sys.executable).with_name("arq")


@dataclass
class WorkerFleet:
    """Worker processes sharing one Redis, one key prefix and one queue."""

    redis_url: str
    prefix: str
    modules: str = "tests.fixtures.recording"
    container: str = "tests.fixtures.recording:Container"
    target: str = "cml_jobs.WorkerSettings"  # what ``arq`` runs
    settings: dict[str, str] = field(default_factory=dict)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: dict[int, Any] = field(default_factory=dict)  # pid -> its stderr file

    @property
    def queue(self) -> str:
        return f"{self.prefix}queue"

    @property
    def record_key(self) -> str:
        return f"{self.prefix}record"

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "CML_JOBS_REDIS_URL": self.redis_url,
            "CML_JOBS_MODULES": self.modules,
            "CML_JOBS_CONTAINER": self.container,
            "CML_JOBS_KEY_PREFIX": self.prefix,
            "CML_JOBS_QUEUE": self.queue,
            "CML_JOBS_LEASE": "3",
            "CML_JOBS_POLL_INTERVAL": "0.5",
            "CML_JOBS_QUEUE_POLL_DELAY": "0.05",
            "CML_JOBS_DRAIN_TIMEOUT": "5",
            "CML_JOBS_TEST_RECORD_URL": self.redis_url,
            "CML_JOBS_TEST_RECORD_KEY": self.record_key,
            **self.settings,
        }

    def start(self, count: int = 1) -> list[subprocess.Popen[bytes]]:
        started = []
        for _ in range(count):
            # A file, not a pipe: nobody reads a pipe while the test runs, and a full one
            # would block the worker.
            log = tempfile.TemporaryFile()
            process = subprocess.Popen(
                [str(ARQ), self.target],
                cwd=ROOT,
                env=self.env(),
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
            self.logs[process.pid] = log
            started.append(process)
        self.processes.extend(started)
        return started

    def stderr(self, process: subprocess.Popen[bytes]) -> str:
        """What a worker has written to stderr so far."""
        log = self.logs[process.pid]
        log.seek(0)
        return str(log.read().decode(errors="replace"))

    async def wait_ready(self, client: aioredis.Redis, timeout: float = 20) -> None:
        """Wait until arq's health-check key shows the workers polling."""
        async with asyncio.timeout(timeout):
            while not await client.exists(f"{self.queue}:health-check"):
                self._check_alive()
                await asyncio.sleep(0.05)

    def _check_alive(self) -> None:
        for process in self.processes:
            if process.poll() is not None:
                err = self.stderr(process)[-3000:]
                raise AssertionError(f"worker exited with {process.returncode}:\n{err}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> list[int]:
        """Signal every worker and wait for it; returns their exit codes."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(sig)
        codes = [process.wait(timeout) for process in self.processes]
        for log in self.logs.values():
            log.close()
        self.processes, self.logs = [], {}
        return codes

    async def records(self, client: aioredis.Redis) -> list[dict[str, Any]]:
        """Every finished run the recording jobs wrote, oldest first."""
        return [json.loads(raw) for raw in await client.lrange(self.record_key, 0, -1)]

    async def starts(self, client: aioredis.Redis) -> list[dict[str, Any]]:
        """Every run start the recording jobs wrote (finished or not), oldest first."""
        raw = await client.lrange(f"{self.record_key}:started", 0, -1)
        return [json.loads(entry) for entry in raw]


@contextmanager
def fleet(redis_url: str, prefix: str, **settings: str) -> Iterator[WorkerFleet]:
    workers = WorkerFleet(redis_url, prefix, settings=settings)
    try:
        yield workers
    finally:
        workers.stop(signal.SIGKILL) if workers.processes else None
