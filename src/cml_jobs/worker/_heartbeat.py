"""The lease heartbeat of a worker process, in a thread of its own.

A job that blocks the event loop (CPU-bound work that ignores cancellation) would stop
an in-loop heartbeat, its lease would expire, and another worker would start the same
task while it still runs. A thread with its own Redis connection keeps renewing the
leases for as long as the process lives and the runs go on, so that cannot happen; when
the process dies, the renewals stop and the runs are re-run after one lease.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from datetime import timedelta

from cml_jobs._execution import Executor
from cml_jobs.stores import Run
from cml_jobs.stores.redis import RedisScheduleStore, redis_client

__all__ = ["HeartbeatThread"]

logger = logging.getLogger("cml_jobs.worker")


class HeartbeatThread:
    """Renews the leases of ``executor``'s runs every ``lease / 3``, from a thread.

    Args:
        executor: the executor whose runs it keeps alive.
        redis_url: the Redis the store lives in.
        prefix: the store's key prefix.
        lease: the run lease.
    """

    def __init__(
        self, executor: Executor, *, redis_url: str, prefix: str, lease: timedelta
    ) -> None:
        self.executor = executor
        self.redis_url = redis_url
        self.prefix = prefix
        self.period = (lease / 3).total_seconds()
        self._stop = threading.Event()
        self._loop = asyncio.get_running_loop()  # the worker's loop: revocations go there
        self._thread = threading.Thread(target=self._main, name="cml-jobs-heartbeat", daemon=True)

    def start(self) -> None:
        """Start beating."""
        self._thread.start()

    def stop(self) -> None:
        """Stop beating and wait for the thread (a few seconds at most)."""
        self._stop.set()
        self._thread.join(timeout=5)

    def _main(self) -> None:
        asyncio.run(self._beat())

    async def _beat(self) -> None:
        client = redis_client(self.redis_url, patient=True)
        store = RedisScheduleStore(client, prefix=self.prefix)
        try:
            while not self._stop.is_set():
                await self._renew(store)
                await asyncio.to_thread(self._stop.wait, self.period)
        finally:
            await client.aclose()

    async def _renew(self, store: RedisScheduleStore) -> None:
        try:
            await self.executor.heartbeat(store, on_revoked=self._revoke)
        except Exception as exc:
            logger.warning("heartbeat failed (%s); retrying in %.1f s", exc, self.period)

    def _revoke(self, run: Run) -> None:
        self._loop.call_soon_threadsafe(self.executor.revoke, run)
