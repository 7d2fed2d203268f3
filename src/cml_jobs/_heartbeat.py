"""The lease heartbeat: one per process that runs jobs, in a thread of its own.

A job that blocks the event loop (CPU-bound work that ignores cancellation) would stop
an in-loop heartbeat, its lease would expire, and another worker would start the same
task while it still runs. A thread with its own store connection keeps renewing the
leases for as long as the process lives and the runs go on, so that cannot happen; when
the process dies, the renewals stop and its runs are re-run after one lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import timedelta

from cml_jobs._execution import Executor
from cml_jobs._workers import Presence
from cml_jobs.stores._base import Run, ScheduleStore

__all__ = ["Heartbeat", "StoreOpener"]

logger = logging.getLogger("cml_jobs.worker")

#: Opens a connection of the heartbeat's own to the store (inside its thread's loop).
StoreOpener = Callable[[], AbstractAsyncContextManager[ScheduleStore]]


class Heartbeat:
    """Renews the leases of ``executor``'s runs every ``period``, from a thread.

    Args:
        executor: the executor whose runs it keeps alive.
        period: the time between renewals (a third of the lease).
        open_store: opens the thread's own connection to the store; None (a store in
            this process's memory) renews through the executor's store, on its loop.
        presence: the worker's registration, refreshed on every beat.
    """

    def __init__(
        self,
        executor: Executor,
        *,
        period: timedelta,
        open_store: StoreOpener | None = None,
        presence: Presence | None = None,
    ) -> None:
        self.executor = executor
        self.presence = presence
        self.period = period.total_seconds()
        self.open_store = open_store
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._main, name="cml-jobs-heartbeat", daemon=True)

    def start(self) -> None:
        """Start beating; the executor's runs are renewed until ``stop``."""
        self._loop = asyncio.get_running_loop()  # revocations go to this loop
        self._thread.start()

    def stop(self) -> None:
        """Stop beating and wait for the thread (a few seconds at most)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _main(self) -> None:
        asyncio.run(self._beat())

    async def _beat(self) -> None:
        opened = self.open_store() if self.open_store else contextlib.nullcontext(None)
        async with opened as store:
            while not self._stop.wait(self.period):  # nothing else runs on this loop
                try:
                    await self._renew(store)
                except Exception as exc:
                    logger.warning("heartbeat failed (%s); retrying in %.1f s", exc, self.period)

    async def _renew(self, store: ScheduleStore | None) -> None:
        if store is not None:
            await self.executor.renew(store, on_revoked=self._revoke)
            if self.presence is not None:
                await self.presence.beat(store)
            return
        assert self._loop is not None
        beat = self._beat_on_loop(self.executor.store)
        asyncio.run_coroutine_threadsafe(beat, self._loop).result(timeout=self.period)

    async def _beat_on_loop(self, store: ScheduleStore) -> None:
        await self.executor.renew(store)
        if self.presence is not None:
            await self.presence.beat(store)

    def _revoke(self, run: Run) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self.executor.revoke, run)
