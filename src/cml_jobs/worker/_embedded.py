"""A worker inside the app's own event loop: the embedded mode, and ``run_worker=True``."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta

from arq.connections import ArqRedis
from arq.worker import Worker

from cml_jobs._runtime import Runtime
from cml_jobs.worker._arq import ARQ_JOB_TIMEOUT, dumps, loads, run_function

__all__ = ["EmbeddedWorker"]


class EmbeddedWorker:
    """An arq worker run as a task of the current event loop.

    Args:
        runtime: the process's runtime (its executor runs the jobs).
        pool: the arq Redis pool (fakeredis in the embedded mode).
    """

    def __init__(self, runtime: Runtime, pool: ArqRedis) -> None:
        settings = runtime.settings
        self.worker = Worker(
            functions=[run_function],
            redis_pool=pool,
            queue_name=settings.queue_name,
            handle_signals=False,
            ctx={"cml_jobs": runtime},
            job_serializer=dumps,
            job_deserializer=loads,
            max_jobs=settings.max_jobs,
            poll_delay=settings.queue_poll_delay.total_seconds(),
            keep_result=0,
            max_tries=1,
            job_timeout=ARQ_JOB_TIMEOUT.total_seconds(),
            health_check_interval=15,
            log_results=False,
        )
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start polling the queue."""
        self._task = asyncio.create_task(self.worker.main(), name="cml-jobs-worker")

    async def stop(self, drain_timeout: timedelta) -> None:
        """Take no new runs, let running ones finish for up to ``drain_timeout``, then stop."""
        self.worker.allow_pick_jobs = False
        running = [task for task in self.worker.tasks.values() if not task.done()]
        if running:
            await asyncio.wait(running, timeout=drain_timeout.total_seconds())
        await self.worker.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
