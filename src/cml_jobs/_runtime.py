"""The parts of a running cml-jobs process, wired together once.

The app's scheduler and every worker process build one ``Runtime``: the registry from
the scanned modules, the container's resources, the executor and the dispatcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from cml_jobs._config import Settings
from cml_jobs._dispatch import Dispatcher, RunSink
from cml_jobs._events import EventHub
from cml_jobs._execution import Executor
from cml_jobs._registry import JobRegistry
from cml_jobs._sinks import LocalSink
from cml_jobs._timing import Clock
from cml_jobs.stores._base import ScheduleStore
from cml_jobs.stores.signed import SignedScheduleStore

__all__ = ["Runtime"]

logger = logging.getLogger("cml_jobs")

# A worker claims what falls due in the next few ms in one tick, and records the runs
# that end within a few ms in one call: far fewer round trips when runs are frequent,
# at no cost to punctuality (each run still starts at its own time).
LOOKAHEAD = timedelta(milliseconds=5)
FINISH_WINDOW = timedelta(milliseconds=5)


class Runtime:
    """Registry, container, executor and dispatcher of one process."""

    def __init__(
        self, settings: Settings, *, store: ScheduleStore, clock: Clock, hub: EventHub | None = None
    ) -> None:
        self.settings = settings
        if settings.signing_key:
            store = SignedScheduleStore(store, settings.signing_key)
        self.store = store
        self.clock = clock
        self.hub = hub or EventHub()
        self.registry = JobRegistry()
        self.provider: Any = None
        self.executor: Executor | None = None
        self.dispatcher: Dispatcher | None = None
        self._dispatching = asyncio.Event()  # set = stop dispatching
        self._beating = asyncio.Event()  # set = stop the heartbeat
        self._loops: list[asyncio.Task[None]] = []
        self._resources_open = False

    async def open(self) -> None:
        """Scan the job modules, wire the container and open its shared resources."""
        self.registry.scan(self.settings.modules)
        container = self.settings.container
        if container is not None:
            from cml_jobs import _di

            modules = [importlib.import_module(name) for name in self.settings.modules]
            _di.wire(container, modules)
            await _di.init_resources(container)
            self._resources_open = True
            self.provider = _di.ServiceProvider(container)
        self.executor = Executor(
            store=self.store,
            registry=self.registry,
            clock=self.clock,
            hub=self.hub,
            provider=self.provider,
            lease=self.settings.lease,
            unknown_job_grace=self.settings.unknown_job_grace,
            max_concurrency=self.settings.max_jobs,
            finish_window=FINISH_WINDOW,
        )
        logger.info(
            "cml-jobs ready: %d job(s) registered (%s)",
            len(self.registry),
            ", ".join(self.registry.names) or "none",
        )

    def make_dispatcher(self, queue: RunSink | None) -> Dispatcher:
        """The dispatcher for this process.

        With ``dispatch="local"`` it runs claimed occurrences in this process and sends
        only runs of unknown jobs to ``queue``; with ``"queue"`` everything goes there.
        """
        assert self.executor is not None
        sink: RunSink
        if self.settings.dispatch == "local" or queue is None:
            sink = LocalSink(self.executor, overflow=queue)
        else:
            sink = queue
        self.dispatcher = Dispatcher(
            store=self.store,
            clock=self.clock,
            sink=sink,
            hub=self.hub,
            lease=self.settings.lease,
            batch=self.settings.batch_size,
            poll_interval=self.settings.poll_interval,
            lookahead=LOOKAHEAD,
        )
        self.executor.on_slot_free = self.dispatcher.slot_freed
        return self.dispatcher

    def start_loops(self, *, heartbeat: bool = True) -> None:
        """Start the dispatcher and (unless a thread does it) the lease heartbeat."""
        assert self.dispatcher is not None and self.executor is not None
        self._dispatching.clear()
        self._beating.clear()
        self._loops = [
            asyncio.create_task(self.dispatcher.run(self._dispatching), name="cml-jobs-dispatcher")
        ]
        if heartbeat:
            beat = _every(self.settings.lease / 3, self.executor.heartbeat, self._beating)
            self._loops.append(asyncio.create_task(beat, name="cml-jobs-heartbeat"))

    async def stop_dispatching(self) -> None:
        """Claim no more runs; runs going on keep their leases until ``stop_loops``."""
        self._dispatching.set()
        if self._loops:
            await _finish(self._loops[0])

    async def drain(self) -> None:
        """Let runs executing in this process finish, up to ``drain_timeout``; runs still
        going then are cancelled and released for another worker to re-run."""
        if self.executor is not None:
            await self.executor.drain(self.settings.drain_timeout)

    async def stop_loops(self) -> None:
        """Stop the dispatcher and the heartbeat."""
        self._dispatching.set()
        self._beating.set()
        for loop in self._loops:
            await _finish(loop)
        self._loops = []

    async def close(self) -> None:
        """Close the container's resources."""
        if self._resources_open:
            from cml_jobs import _di

            await _di.shutdown_resources(self.settings.container)
            self._resources_open = False


async def _finish(task: asyncio.Task[None]) -> None:
    """Let a loop that was told to stop end its current step, then make sure it is gone."""
    with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
        await asyncio.wait_for(asyncio.shield(task), 5)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _every(
    period: timedelta, action: Callable[[], Awaitable[None]], stopping: asyncio.Event
) -> None:
    """Call ``action`` every ``period`` until ``stopping``; failures are logged, not fatal."""
    while not stopping.is_set():
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stopping.wait(), period.total_seconds())
        if stopping.is_set():
            return
        try:
            await action()
        except Exception as exc:
            logger.warning("heartbeat failed (%s); retrying in %.1f s", exc, period.total_seconds())
