"""The parts of a running cml-jobs process, and the one lifecycle that starts and stops them.

``BackgroundTaskScheduler``, the arq worker's start-up and shut-down hooks and
``cml_jobs.testing`` enter the same contexts: ``open_runtime`` (the registry from the
scanned modules, the container's resources, the descriptor codec) and, in a process that
runs jobs, an ``Engine`` (dispatcher, executor and lease heartbeat). Leaving them stops
everything in the reverse order: no more claims, the runs going on drained, the
heartbeat stopped, the container's resources closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from types import TracebackType
from typing import Any

from cml_jobs._codec import DescriptorCodec
from cml_jobs._config import Settings
from cml_jobs._dispatch import Dispatcher, RunSink
from cml_jobs._events import EventHub
from cml_jobs._execution import Executor
from cml_jobs._heartbeat import Heartbeat, StoreOpener
from cml_jobs._registry import JobRegistry
from cml_jobs._timing import Clock
from cml_jobs._workers import Presence, worker_id
from cml_jobs.stores._base import ScheduleStore, WakeupSource

__all__ = ["Engine", "Runtime", "new_dispatcher", "open_runtime"]

logger = logging.getLogger("cml_jobs")

# A worker claims what falls due in the next few ms in one tick, and records the runs
# that end within a few ms in one call: far fewer round trips when runs are frequent,
# at no cost to punctuality (each run still starts at its own time).
LOOKAHEAD = timedelta(milliseconds=20)
FINISH_WINDOW = timedelta(milliseconds=20)


@dataclass(frozen=True)
class Runtime:
    """What every cml-jobs process has, scheduling or running: its settings, store,
    clock, event hub, job registry, descriptor codec, container and its one executor
    (idle unless the process runs jobs)."""

    settings: Settings
    store: ScheduleStore
    clock: Clock
    hub: EventHub
    registry: JobRegistry
    codec: DescriptorCodec
    executor: Executor
    provider: Any = None  # the container, wrapped for ``configure`` (``_di.ServiceProvider``)


@contextlib.asynccontextmanager
async def open_runtime(
    settings: Settings, *, store: ScheduleStore, clock: Clock, hub: EventHub
) -> AsyncIterator[Runtime]:
    """Scan the job modules and open the container's shared resources until exit."""
    registry = JobRegistry()
    registry.scan(settings.modules)
    container, provider = settings.container, None
    if container is not None:
        from cml_jobs import _di

        _di.wire(container, [importlib.import_module(name) for name in settings.modules])
        await _di.init_resources(container)
        provider = _di.ServiceProvider(container)
    logger.info(
        "cml-jobs ready: %d job(s) registered (%s)",
        len(registry),
        ", ".join(registry.names) or "none",
    )
    codec = DescriptorCodec(settings.signing_key)
    executor = Executor(
        store=store,
        registry=registry,
        clock=clock,
        hub=hub,
        provider=provider,
        lease=settings.lease,
        max_concurrency=settings.max_jobs,
        finish_window=FINISH_WINDOW,
        worker=worker_id(),
    )
    # A task cancelled in this process stops its runs here at once.
    unsubscribe = hub.subscribe(executor.on_event)
    try:
        yield Runtime(settings, store, clock, hub, registry, codec, executor, provider)
    finally:
        unsubscribe()
        if container is not None:
            from cml_jobs import _di

            await _di.shutdown_resources(container)


class Engine:
    """The part of a process that runs jobs: dispatcher, executor and lease heartbeat,
    started together by ``async with`` and stopped in order by ``stop``.

    Args:
        runtime: the process's runtime.
        queue: where claimed runs go instead of this process's executor (the arq queue,
            with ``dispatch="queue"``); None runs them here.
        open_store: how the heartbeat thread opens a store connection of its own (see
            ``Heartbeat``).
    """

    def __init__(
        self,
        runtime: Runtime,
        *,
        queue: RunSink | None = None,
        open_store: StoreOpener | None = None,
    ) -> None:
        settings = runtime.settings
        self.runtime = runtime
        self.executor = runtime.executor
        self.dispatcher = new_dispatcher(runtime, queue or self.executor, lookahead=LOOKAHEAD)
        self.executor.on_slot_free = self.dispatcher.slot_freed
        self.presence = Presence(self.executor, runtime.clock.now())
        self.heartbeat = Heartbeat(
            self.executor, period=settings.lease / 3, open_store=open_store, presence=self.presence
        )
        #: How long ``stop`` lets running jobs finish; ``BackgroundTaskScheduler.stop`` sets it.
        self.drain_timeout = settings.drain_timeout
        self._stopping = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        self._wakeups = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Engine:
        await self.presence.beat(self.runtime.store)  # listed from the start
        store = self.runtime.store
        if isinstance(store, WakeupSource):  # tasks scheduled elsewhere wake us at once
            await self._wakeups.enter_async_context(store.wakeups(self.dispatcher.wake))
        self._loop = asyncio.create_task(
            self.dispatcher.run(self._stopping), name="cml-jobs-dispatcher"
        )
        self.heartbeat.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Claim no more runs, let the runs going on finish (up to ``drain_timeout``; the
        rest are given back for a re-run elsewhere), then stop the heartbeat and leave
        the worker registry."""
        self._stopping.set()
        await self._wakeups.aclose()
        if self._loop is not None:
            await _ended(self._loop)
        await self.executor.drain(self.drain_timeout)
        self.heartbeat.stop()
        await self.presence.leave(self.runtime.store)


def new_dispatcher(runtime: Runtime, sink: RunSink, *, lookahead: timedelta) -> Dispatcher:
    """A dispatcher for ``runtime`` that hands its runs to ``sink``."""
    settings = runtime.settings
    return Dispatcher(
        store=runtime.store,
        clock=runtime.clock,
        sink=sink,
        hub=runtime.hub,
        registry=runtime.registry,
        codec=runtime.codec,
        lease=settings.lease,
        batch=settings.batch_size,
        poll_interval=settings.poll_interval,
        lookahead=lookahead,
        unknown_job_grace=settings.unknown_job_grace,
        worker=runtime.executor.worker,
    )


async def _ended(task: asyncio.Task[None]) -> None:
    """Let a loop that was told to stop end its current step (a store call), then make
    sure it is gone."""
    with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
        await asyncio.wait_for(asyncio.shield(task), 5)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
