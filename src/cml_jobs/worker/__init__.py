"""Workers: the only package that imports arq.

``arq cml_jobs.WorkerSettings`` runs a worker configured from ``CML_JOBS_*`` environment
variables; ``worker_settings(...)`` builds the same settings class in code.
"""

from __future__ import annotations

import functools
import logging
import os
from contextlib import AsyncExitStack
from typing import Any

from cml_jobs._config import Settings
from cml_jobs._events import EventHub
from cml_jobs._runtime import Engine, open_runtime
from cml_jobs._timing import Clock, SystemClock
from cml_jobs.events import EventStream, StreamEntry
from cml_jobs.exceptions import ConfigurationError
from cml_jobs.stores.redis import publish_events
from cml_jobs.worker._access import preflight, stopper
from cml_jobs.worker._arq import (
    ARQ_JOB_TIMEOUT,
    ArqSink,
    WorkerContext,
    dumps,
    loads,
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
            share the embedded ``memory://`` store).
    """
    settings = (settings or _settings_from_env()).with_changes(**_normalised(changes))
    _require_shared_redis(settings)
    lifecycle = _Lifecycle(settings, clock or SystemClock())
    return type("WorkerSettings", (), _arq_options(settings, lifecycle))


def _require_shared_redis(settings: Settings) -> None:
    if settings.embedded:
        raise ConfigurationError(
            "a worker process needs a shared Redis: set CML_JOBS_REDIS_URL=redis://host:6379/0 "
            "(redis_url='memory://' runs the worker inside the app instead, run_worker=True)"
        )


def _arq_options(settings: Settings, lifecycle: _Lifecycle) -> dict[str, Any]:
    """The attributes of arq's ``WorkerSettings`` class for these settings."""
    return {
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


class _Lifecycle:
    """arq's on_startup / on_shutdown for a worker process: the same runtime and engine
    as an app's ``run_worker``, entered at start-up and left at shut-down."""

    def __init__(self, settings: Settings, clock: Clock) -> None:
        self.settings = settings
        self.clock = clock

    async def startup(self, ctx: WorkerContext) -> None:
        from cml_jobs.stores.redis import RedisScheduleStore, open_redis_store

        settings, pool = self.settings, ctx["redis"]
        ctx["cml_jobs_exit"] = stack = AsyncExitStack()
        hub = EventHub()
        stop = stopper(ctx)
        publisher = await publish_events(hub, pool, settings.key_prefix, stack)
        publisher.on_refused = stop.refused("XADD (the event stream)")
        store = RedisScheduleStore(pool, prefix=settings.key_prefix)
        await preflight(store, pool, settings.queue_name, self.clock.now())
        runtime = await stack.enter_async_context(
            open_runtime(settings, store=store, clock=self.clock, hub=hub)
        )
        opener = functools.partial(
            open_redis_store, settings.redis_url, prefix=settings.key_prefix, patient=True
        )
        queue = ArqSink(runtime, pool) if settings.dispatch == "queue" else None
        engine = Engine(runtime, queue=queue, open_store=opener)
        engine.dispatcher.on_refused = stop
        ctx["cml_jobs"] = await stack.enter_async_context(engine)
        logger.info("cml-jobs worker started on queue %r", settings.queue_name)

    async def shutdown(self, ctx: WorkerContext) -> None:
        stack = ctx.get("cml_jobs_exit")
        if stack is not None:
            # Claims stop, running jobs drain, the heartbeat stops, resources close and
            # the last events reach the stream, in that order.
            await stack.aclose()
            logger.info("cml-jobs worker stopped")
        if "cml_jobs_failure" in ctx:  # exit non-zero, with the reason as the last line
            raise SystemExit(f"cml-jobs worker stopped: {ctx['cml_jobs_failure']}")
