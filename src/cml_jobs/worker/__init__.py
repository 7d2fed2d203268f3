"""Workers: the only package that imports arq.

``arq cml_jobs.WorkerSettings`` runs a worker configured from ``CML_JOBS_*`` environment
variables; ``worker_settings(...)`` builds the same settings class in code.
"""

from __future__ import annotations

import gc
import logging
import os
from contextlib import AsyncExitStack
from typing import Any

from cml_jobs._config import Settings
from cml_jobs._connect import history_options, open_store_patiently, store_opener
from cml_jobs._events import EventHub
from cml_jobs._runtime import Engine, open_runtime
from cml_jobs._timing import Clock, SystemClock
from cml_jobs.events import EventStream, StreamEntry
from cml_jobs.exceptions import ConfigurationError
from cml_jobs.stores import ScheduleStore
from cml_jobs.stores.redis import publish_events
from cml_jobs.worker._access import preflight, refusals_stop_the_worker, stopper
from cml_jobs.worker._arq import (
    ARQ_JOB_TIMEOUT,
    ArqSink,
    WorkerContext,
    dumps,
    loads,
    redis_pool,
    redis_settings,
    run_function,
)

# EventStream and StreamEntry moved to cml_jobs.events; the names stay here for a while
# so that code importing them from cml_jobs.worker keeps working.
__all__ = ["EventStream", "StreamEntry", "worker_settings"]

logger = logging.getLogger("cml_jobs.worker")

#: The Redis a worker process uses when CML_JOBS_REDIS_URL is not set.
DEFAULT_WORKER_REDIS_URL = "redis://localhost:6379/0"

#: How often a worker refreshes arq's health-check key (``arq --check`` reads it).
HEALTH_CHECK_INTERVAL = 15


def worker_settings(
    settings: Settings | None = None, *, clock: Clock | None = None, **changes: Any
) -> type:
    """An arq ``WorkerSettings`` class for a cml-jobs worker process.

    Args:
        settings: the settings; by default read from ``CML_JOBS_*`` environment variables.
        clock: the clock (tests inject one); the system clock by default.
        **changes: settings to override, e.g. ``redis_url=...``, ``modules=[...]``.

    Raises:
        ConfigurationError: the settings name no Redis (a separate worker process cannot
            share the embedded ``memory://`` store, and arq needs a Redis even when the
            tasks are kept in PostgreSQL).
    """
    settings = (settings or _settings_from_env()).with_changes(**_normalised(changes))
    _require_shared_redis(settings)
    lifecycle = _Lifecycle(settings, clock or SystemClock())
    return type("WorkerSettings", (), _arq_options(settings, lifecycle))


def _require_shared_redis(settings: Settings) -> None:
    # arq needs a Redis, wherever the tasks are kept.
    if settings.redis_url.startswith("memory://"):
        raise ConfigurationError(
            "a worker process needs a shared Redis (for arq, even with its tasks in "
            "PostgreSQL): set CML_JOBS_REDIS_URL=redis://host:6379/0 "
            "(redis_url='memory://' runs the worker inside the app instead, run_worker=True)"
        )
    if settings.embedded:  # store_url="memory://" beside a real Redis
        raise ConfigurationError(
            f"store_url={settings.store_url!r} keeps tasks in one process's memory, which a "
            "worker process cannot share; leave store_url out (tasks in Redis) or name a "
            "PostgreSQL database"
        )


def _arq_options(settings: Settings, lifecycle: _Lifecycle) -> dict[str, Any]:
    """The attributes of arq's ``WorkerSettings`` class for these settings."""
    pool = redis_pool(settings.redis_url, settings.queue_name)
    return {
        **({} if pool is None else {"redis_pool": pool}),
        "functions": [run_function],
        "redis_settings": redis_settings(settings.redis_url),
        "queue_name": settings.queue_name,
        "on_startup": lifecycle.startup,
        "on_shutdown": lifecycle.shutdown,
        "job_serializer": dumps,
        "job_deserializer": loads,
        "max_jobs": settings.max_jobs,
        "poll_delay": settings.queue_poll_delay.total_seconds(),
        "keep_result": 0,
        "max_tries": 1,
        "job_timeout": ARQ_JOB_TIMEOUT.total_seconds(),
        "job_completion_wait": int(settings.drain_timeout.total_seconds()),
        "health_check_interval": HEALTH_CHECK_INTERVAL,
        "log_results": False,
        "cml_jobs_settings": settings,
        "__doc__": "arq worker settings for cml-jobs (see cml_jobs.worker_settings).",
    }


def _settings_from_env() -> Settings:
    # A worker process always needs a shared Redis: without CML_JOBS_REDIS_URL it uses the
    # local default, as arq does.
    settings = Settings.from_env()
    if "CML_JOBS_REDIS_URL" not in os.environ:
        settings = settings.with_changes(redis_url=DEFAULT_WORKER_REDIS_URL)
    return settings


def _normalised(changes: dict[str, Any]) -> dict[str, Any]:
    if "modules" in changes:
        changes = {**changes, "modules": tuple(changes["modules"])}
    return changes


def default_logging() -> None:
    """Give cml-jobs' INFO lines (one per run outcome, worker start and stop) a handler on
    stderr, unless logging was configured for them: arq's own default configures only its
    ``arq`` logger, which would leave a worker silent about its runs."""
    ours = logging.getLogger("cml_jobs")
    if ours.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    ours.addHandler(handler)
    if ours.level == logging.NOTSET:
        ours.setLevel(logging.INFO)


def _freeze_start_up() -> None:
    """Keep what start-up built (modules, classes, the container), which lives as long as
    the process, out of the collector's full passes: they would otherwise stop the loop
    for tens of ms under load, and show as late runs."""
    gc.collect()
    gc.freeze()


class _Lifecycle:
    """arq's on_startup / on_shutdown for a worker process: the same runtime and engine
    as an app's ``run_worker``, entered at start-up and left at shut-down."""

    def __init__(self, settings: Settings, clock: Clock) -> None:
        self.settings = settings
        self.clock = clock

    async def startup(self, ctx: WorkerContext) -> None:
        default_logging()
        settings, pool = self.settings, ctx["redis"]
        ctx["cml_jobs_exit"] = stack = AsyncExitStack()
        hub = EventHub()
        stop = stopper(ctx)
        publisher = await publish_events(hub, pool, settings.key_prefix, stack)
        publisher.on_refused = stop.refused("XADD (the event stream)")
        store = await self._store(pool, stack)
        await preflight(store, pool, settings.queue_name, self.clock.now())
        runtime = await stack.enter_async_context(
            open_runtime(settings, store=store, clock=self.clock, hub=hub)
        )
        queue = ArqSink(runtime, pool) if settings.dispatch == "queue" else None
        engine = Engine(runtime, queue=queue, open_store=store_opener(settings))
        engine.dispatcher.on_refused = stop
        with refusals_stop_the_worker():  # e.g. the worker registry's HSET
            ctx["cml_jobs"] = await stack.enter_async_context(engine)
        _freeze_start_up()
        logger.info("cml-jobs worker started on queue %r", settings.queue_name)

    async def _store(self, pool: Any, stack: AsyncExitStack) -> ScheduleStore:
        """The store: on arq's own Redis pool, unless tasks are kept elsewhere
        (``store_url``), which gets connections of its own that wait for its server."""
        settings = self.settings
        if settings.store_location == settings.redis_url:
            from cml_jobs.stores.redis import RedisScheduleStore

            return RedisScheduleStore(pool, prefix=settings.key_prefix, **history_options(settings))
        return await stack.enter_async_context(open_store_patiently(settings))

    async def shutdown(self, ctx: WorkerContext) -> None:
        stack = ctx.get("cml_jobs_exit")
        if stack is not None:
            # Claims stop, running jobs drain, the heartbeat stops, resources close and
            # the last events reach the stream, in that order.
            await stack.aclose()
            logger.info("cml-jobs worker stopped")
        if "cml_jobs_failure" in ctx:  # exit non-zero, with the reason as the last line
            raise SystemExit(f"cml-jobs worker stopped: {ctx['cml_jobs_failure']}")
