"""A worker that Redis refuses (a wrong password, an ACL user without a command or a key)
stops at once, exits non-zero and says which user and which command: waiting cannot fix
it, unlike a lost connection, which a worker waits out for as long as it takes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any, NoReturn

from redis.exceptions import RedisError

from cml_jobs.exceptions import StoreAccessError
from cml_jobs.stores import ScheduleStore
from cml_jobs.stores.redis import access_denied, access_message
from cml_jobs.worker._arq import WorkerContext

__all__ = ["Stopper", "preflight", "refusals_stop_the_worker", "stopper"]

logger = logging.getLogger("cml_jobs.worker")


class Stopper:
    """Stops a worker for good: logs why, then cancels arq's main task (the one that ran
    start-up), so that arq shuts down and the shut-down exits non-zero with the reason."""

    def __init__(self, ctx: WorkerContext, pool: Any) -> None:
        self.ctx, self.pool = ctx, pool
        self.main = asyncio.current_task()

    def __call__(self, message: str) -> None:
        if "cml_jobs_failure" in self.ctx:
            return
        self.ctx["cml_jobs_failure"] = message
        logger.critical("cml-jobs worker stops: %s", message)
        if self.main is not None:
            self.main.cancel()

    def refused(self, command: str) -> Callable[[BaseException], None]:
        """A callback for a Redis error that ``access_denied`` recognised."""
        return lambda error: self(access_message(error, kwargs_of(self.pool), command))


def stopper(ctx: WorkerContext) -> Stopper:
    """The ``Stopper`` of the worker whose start-up is running now."""
    return Stopper(ctx, ctx["redis"])


def kwargs_of(client: Any) -> dict[str, Any]:
    """A client's connection keywords: who it connects as, and where."""
    kwargs: dict[str, Any] = client.connection_pool.connection_kwargs
    return kwargs


async def preflight(store: ScheduleStore, pool: Any, queue: str, now: datetime) -> None:
    """Stop at start-up when Redis refuses what a worker does first: the store's poll
    script, and arq's read of the queue."""
    try:
        await store.poll(now, 0)
    except StoreAccessError as exc:
        _exit(str(exc), exc)
    try:
        await pool.zrangebyscore(queue, "-inf", "-inf")
    except RedisError as exc:
        if not access_denied(exc):
            raise
        _exit(access_message(exc, kwargs_of(pool), f"ZRANGEBYSCORE (the queue {queue!r})"), exc)


@contextlib.contextmanager
def refusals_stop_the_worker() -> Iterator[None]:
    """At start-up: a refusal by the store stops the worker with one clear line."""
    try:
        yield
    except StoreAccessError as exc:
        _exit(str(exc), exc)


def _exit(message: str, cause: BaseException) -> NoReturn:
    logger.critical("cml-jobs worker stops: %s", message)
    raise SystemExit(f"cml-jobs worker stopped: {message}") from cause
