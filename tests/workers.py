"""Real worker processes for tests: ``arq cml_jobs.WorkerSettings`` in subprocesses.

A worker is ready when *it* says so: each process's stderr is searched for its own
"cml-jobs worker started" line, which cml-jobs logs once the worker's dispatcher runs.
arq's health key is no such signal, since any worker on the queue (an old one) sets it.
Waits are conditions with a deadline (``until``), never fixed windows.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parent.parent
ARQ = Path(sys.executable).with_name("arq")

#: What a worker process logs (logger ``cml_jobs.worker``, INFO) once its dispatcher runs.
STARTED_LINE = "cml-jobs worker started"

#: Generous on purpose: a wait ends as soon as its condition holds, so only a failing test
#: waits this long, and a busy machine never turns a slow pass into a failure.
DEADLINE_S = 60.0

#: arq's own logging setup (``arq --custom-log-dict``) with cml-jobs' loggers added at
#: INFO on the same stderr. arq's default configures only the ``arq`` logger, so without
#: this a worker never writes its "started" line, nor any other INFO line of cml-jobs.
WORKER_LOG_CONFIG: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "stamped": {
            "format": "%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s",
            "datefmt": "%H:%M:%S",
        }
    },
    "handlers": {
        "stderr": {"class": "logging.StreamHandler", "formatter": "stamped", "level": "INFO"}
    },
    "loggers": {
        "arq": {"handlers": ["stderr"], "level": "INFO"},
        "cml_jobs": {"handlers": ["stderr"], "level": "INFO"},
    },
}

T = TypeVar("T")


async def until(
    check: Callable[[], Awaitable[T]],
    what: str,
    timeout: float = DEADLINE_S,
    *,
    alive: Callable[[], None] | None = None,
    every: float = 0.05,
) -> T:
    """Poll ``check`` every ``every`` seconds until it returns something truthy, and
    return that.

    Fails (with ``what``) when ``timeout`` seconds pass first, and at once when ``alive``
    raises (a worker exited).
    """
    deadline = time.monotonic() + timeout
    while True:
        if alive is not None:
            alive()
        if found := await check():
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        await asyncio.sleep(every)


@dataclass
class WorkerFleet:
    """Worker processes sharing one Redis, one key prefix and one queue."""

    redis_url: str
    prefix: str
    modules: str = "tests.fixtures.recording"
    container: str = "tests.fixtures.recording:Container"
    target: str = "cml_jobs.WorkerSettings"  # what ``arq`` runs
    settings: dict[str, str] = field(default_factory=dict)
    log_dict: str | None = "tests.workers.WORKER_LOG_CONFIG"  # None: arq's default logging
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: dict[int, IO[bytes]] = field(default_factory=dict)  # pid -> its stderr file
    ready: set[int] = field(default_factory=set)  # pids that logged their start

    @property
    def queue(self) -> str:
        return self.settings.get("CML_JOBS_QUEUE", f"{self.prefix}queue")

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
            logging = ["--custom-log-dict", self.log_dict] if self.log_dict else []
            process = subprocess.Popen(
                [str(ARQ), *logging, self.target],
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
        # pread, not seek + read: the worker writes through the same open file, so moving
        # its offset would make the worker overwrite what it wrote before.
        fd = self.logs[process.pid].fileno()
        return os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace")

    async def wait_ready(self, client: aioredis.Redis | None = None, timeout: float = 60) -> None:
        """Wait until every worker started so far has logged its own start (its dispatcher
        runs); with ``client``, also until arq's health key shows the queue polled."""

        async def all_started() -> bool:
            for process in self.processes:
                if process.pid not in self.ready and STARTED_LINE in self.stderr(process):
                    self.ready.add(process.pid)
            return all(process.pid in self.ready for process in self.processes)

        await until(all_started, "every worker logged its start", timeout, alive=self.check_alive)
        if client is not None:
            health = f"{self.queue}:health-check"
            await until(lambda: client.exists(health), f"{health} set", timeout)

    async def until(
        self, check: Callable[[], Awaitable[T]], what: str, timeout: float = DEADLINE_S
    ) -> T:
        """``until`` that fails at once, with its stderr, when one of these workers exits."""
        return await until(check, what, timeout, alive=self.check_alive)

    def check_alive(self) -> None:
        """Fail, with the worker's stderr, if a worker has exited."""
        for process in self.processes:
            if process.poll() is not None:
                err = self.stderr(process)[-3000:]
                raise AssertionError(f"worker exited with {process.returncode}:\n{err}")

    def forget(self, process: subprocess.Popen[bytes], timeout: float = 30) -> int:
        """Take out of the fleet a worker the test has signalled to end (killed, stopped),
        so its exit is no failure; wait for it and return its exit code. Its stderr stays
        readable until ``stop``."""
        self.processes.remove(process)
        return process.wait(timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> list[int]:
        """Signal every worker and wait for it; returns their exit codes."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(sig)
        codes = [process.wait(timeout) for process in self.processes]
        for log in self.logs.values():
            log.close()
        self.processes, self.logs, self.ready = [], {}, set()
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
        workers.stop(signal.SIGKILL)
