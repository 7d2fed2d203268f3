"""``BackgroundTaskScheduler``: the app's handle on cml-jobs, with its start/stop lifecycle."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AsyncExitStack
from datetime import timedelta
from types import TracebackType
from typing import Any

from cml_jobs._bus import BackgroundTasksBus, TaskInfo
from cml_jobs._config import Settings
from cml_jobs._connect import open_store, store_opener
from cml_jobs._events import EventCallback, EventHub, TaskEvent
from cml_jobs._heartbeat import StoreOpener
from cml_jobs._runtime import Engine, Runtime, open_runtime
from cml_jobs._timing import Clock, SystemClock
from cml_jobs.exceptions import ConfigurationError, StoreUnavailableError
from cml_jobs.stores._base import ScheduleStore
from cml_jobs.stores._ops import RunRecord, WorkerInfo

__all__ = ["BackgroundTaskScheduler"]

logger = logging.getLogger("cml_jobs")


_SEED_REDIS = ("redis_host", "redis_port", "redis_db")
_SEED_MONGO = ("mongo_uri", "mongo_db", "mongo_collection")


def _store_url(redis_url: str | None, settings: dict[str, Any]) -> str:
    """The store URL, from ``redis_url`` or from the seed's store settings, which are
    taken out of ``settings``."""
    mongo = sorted(set(settings) & set(_SEED_MONGO))
    if mongo:
        raise ConfigurationError(
            f"cml-jobs has no MongoDB store: {mongo!r} cannot be used; keep tasks in Redis "
            'with redis_url="redis://host:6379/1", in PostgreSQL with '
            'store_url="postgresql://host:5432/db", or in this process with "memory://"'
        )
    seed = {name: settings.pop(name) for name in _SEED_REDIS if name in settings}
    if not seed:
        return redis_url or "memory://"
    host, port, db = (
        seed.get("redis_host", "localhost"),
        seed.get("redis_port", 6379),
        seed.get("redis_db", 0),
    )
    if not (isinstance(host, str) and type(port) is int and type(db) is int):
        raise ConfigurationError(
            f"redis_host={host!r}, redis_port={port!r}, redis_db={db!r}: expected a host name "
            'and two whole numbers; or give redis_url="redis://host:6379/1" instead'
        )
    url = f"redis://{host}:{port}/{db}"
    if redis_url is not None:
        raise ConfigurationError(
            f"redis_url={redis_url!r} and {sorted(seed)!r} both say where the store is; "
            f"give only redis_url (the others amount to redis_url={url!r})"
        )
    return url


class BackgroundTaskScheduler:
    """Schedules tasks and, with ``run_worker``, runs them in this process.

    Build it with ``configure``; use it as an async context manager (or call ``start``
    and ``stop``), e.g. in a FastAPI/Starlette lifespan.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        store: ScheduleStore | None = None,
        clock: Clock | None = None,
        run_worker: bool | None = None,
    ) -> None:
        self.settings = settings
        self.clock: Clock = clock or SystemClock()
        self.run_worker = settings.embedded if run_worker is None else run_worker
        self.hub = EventHub()
        self._given_store = store
        self._runtime: Runtime | None = None
        self._engine: Engine | None = None
        self._bus: BackgroundTasksBus | None = None
        self._exit = AsyncExitStack()

    @classmethod
    def configure(
        cls,
        container: Any = None,
        *,
        modules: Iterable[str] = (),
        redis_url: str | None = None,
        store: ScheduleStore | None = None,
        clock: Clock | None = None,
        run_worker: bool | None = None,
        **settings: Any,
    ) -> BackgroundTaskScheduler:
        """Configure a scheduler; nothing connects until ``start``.

        Args:
            container: a dependency-injector container; jobs get it in ``configure``. It
                may be given by position, as in ``configure(container, modules=[...])``.
            modules: modules (packages recursively) scanned for ``@backgroundjob`` classes.
            redis_url: ``"memory://"`` (the default: everything in this process, nothing
                kept) or a Redis URL shared with the workers.
            store: a ``ScheduleStore`` to use instead of the one the URLs imply.
            clock: the time source; tests pass ``cml_jobs.testing.ManualClock``.
            run_worker: run a worker (dispatcher and executor) inside this process. The
                default is True for ``memory://`` and False for a shared store, whose
                workers run as ``arq cml_jobs.WorkerSettings``.
            **settings: any other ``Settings`` field (``store_url`` to keep tasks in
                PostgreSQL, ``lease``, ``poll_interval``, ``max_jobs``, ``key_prefix``,
                ``queue_name``, ``drain_timeout``...). The seed's ``redis_host``,
                ``redis_port`` and ``redis_db`` are accepted too, and become
                ``redis_url="redis://{redis_host}:{redis_port}/{redis_db}"``.

        Raises:
            ConfigurationError: an unknown setting, ``redis_url`` given beside
                ``redis_host``/``redis_port``/``redis_db``, or a MongoDB setting.
        """
        url = _store_url(redis_url, settings)
        config = Settings(redis_url=url, modules=tuple(modules), container=container).with_changes(
            **settings
        )
        return cls(config, store=store, clock=clock, run_worker=run_worker)

    @property
    def bus(self) -> BackgroundTasksBus:
        """Where tasks are scheduled, cancelled, paused and resumed."""
        if self._bus is None:
            raise ConfigurationError("the scheduler is not started; use 'async with scheduler:'")
        return self._bus

    @property
    def runtime(self) -> Runtime:
        """The running parts of this process (for ``cml_jobs.testing``)."""
        if self._runtime is None:
            raise ConfigurationError("the scheduler is not started; use 'async with scheduler:'")
        return self._runtime

    @property
    def engine(self) -> Engine | None:
        """The dispatcher, executor and heartbeat of ``run_worker``, or None."""
        return self._engine

    async def start(self) -> None:
        """Connect to the store, scan the job modules, open the container's resources and,
        with ``run_worker``, start dispatching and executing.

        Raises:
            StoreUnavailableError: the store's server cannot be reached.
        """
        try:
            store, client = await self._exit.enter_async_context(
                open_store(self.settings, self._given_store)
            )
            if client is not None:
                from cml_jobs.stores.redis import publish_events

                await publish_events(self.hub, client, self.settings.key_prefix, self._exit)
            runtime = await self._exit.enter_async_context(
                open_runtime(self.settings, store=store, clock=self.clock, hub=self.hub)
            )
            self._runtime = runtime
            if self.run_worker:
                self._engine = await self._exit.enter_async_context(
                    Engine(runtime, open_store=self._heartbeat_store())
                )
        except BaseException:
            await self._exit.aclose()
            raise
        self._bus = BackgroundTasksBus(
            store=runtime.store,
            registry=runtime.registry,
            codec=runtime.codec,
            clock=self.clock,
            hub=self.hub,
            on_scheduled=self._engine.dispatcher.wake if self._engine else None,
        )
        if self._engine is not None:
            # Only a process that runs tasks resumes them; reading every task costs a
            # listing (0.5 s at 10,000 tasks) that a `cml-jobs` command or a dashboard
            # would pay on every start for a log line.
            await self._log_recovered()

    def _heartbeat_store(self) -> StoreOpener | None:
        """The heartbeat thread's own connection to the shared store; None for a store in
        memory or one given to ``configure``, renewed on this loop."""
        return None if self._given_store is not None else store_opener(self.settings)

    async def _log_recovered(self) -> None:
        try:
            tasks = await self.runtime.store.list()
        except StoreUnavailableError:
            return
        if tasks:
            logger.info("cml-jobs: %d task(s) found in the store; resuming them", len(tasks))

    async def stop(self, drain_timeout: timedelta | None = None) -> None:
        """Stop claiming runs, let running ones finish (up to ``drain_timeout``, by default
        the configured one; the rest are given back for a re-run), then close everything."""
        if drain_timeout is not None and self._engine is not None:
            self._engine.drain_timeout = drain_timeout
        self._bus = None
        await self._exit.aclose()
        self._runtime = self._engine = None

    async def __aenter__(self) -> BackgroundTaskScheduler:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    async def list_tasks(self) -> list[TaskInfo]:
        """Every task, with its next and last run times (see ``TaskInfo``)."""
        return await self.bus.list_tasks()

    async def get_history(self, task_id: str, limit: int = 100) -> list[RunRecord]:
        """The task's latest runs, newest first (see ``BackgroundTasksBus.get_history``)."""
        return await self.bus.get_history(task_id, limit)

    async def list_workers(self) -> list[WorkerInfo]:
        """The workers alive now (see ``BackgroundTasksBus.list_workers``)."""
        return await self.bus.list_workers()

    def subscribe(self, callback: EventCallback) -> Callable[[], None]:
        """Call ``callback(event)`` for each lifecycle event in this process.

        Returns:
            A function that unsubscribes.
        """
        return self.hub.subscribe(callback)

    def events(self) -> AsyncIterator[TaskEvent]:
        """An async iterator over lifecycle events in this process, from now on."""
        return self.hub.events()
