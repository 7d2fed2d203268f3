"""Connecting an app process: the store and the arq pool that ``redis_url`` names."""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any

from arq.connections import ArqRedis, create_pool
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from cml_jobs._config import Settings
from cml_jobs.exceptions import ConfigurationError, StoreUnavailableError
from cml_jobs.stores import InMemoryScheduleStore, ScheduleStore
from cml_jobs.worker._arq import dumps, loads, redis_settings

__all__ = ["connect"]

# An app's calls fail after this many retries with StoreUnavailableError, unlike a
# worker process, which waits for Redis for as long as it takes.
_APP_RETRIES = 3


async def connect(
    settings: Settings, exit_stack: AsyncExitStack, store: ScheduleStore | None, *, queue: bool
) -> tuple[ScheduleStore, ArqRedis | None]:
    """Open what ``settings.redis_url`` names; closing ``exit_stack`` closes it.

    ``queue`` asks for the arq pool even in the embedded mode, where only a worker in
    this process needs one.
    """
    if settings.embedded:
        if not queue:
            return store or InMemoryScheduleStore(), None
        pool = _fake_pool(settings)
        exit_stack.push_async_callback(pool.aclose)
        return store or InMemoryScheduleStore(), pool
    pool = await _redis_pool(settings)
    exit_stack.push_async_callback(pool.aclose)
    if store is None:
        from cml_jobs.stores.redis import RedisScheduleStore

        store = RedisScheduleStore(pool, prefix=settings.key_prefix)
    return store, pool


def _fake_pool(settings: Settings) -> ArqRedis:
    try:
        import fakeredis
    except ImportError:
        raise ConfigurationError(
            "redis_url='memory://' needs fakeredis: pip install 'cml-jobs[embedded]' "
            "(or pass a redis:// URL)"
        ) from None
    server = fakeredis.FakeServer()
    fake: Any = fakeredis.FakeAsyncRedis(server=server)
    return ArqRedis(
        pool_or_conn=fake.connection_pool,
        job_serializer=dumps,
        job_deserializer=loads,
        default_queue_name=settings.queue_name,
    )


async def _redis_pool(settings: Settings) -> ArqRedis:
    config = redis_settings(settings.redis_url)
    config.conn_retries = _APP_RETRIES
    config.retry = Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=_APP_RETRIES)
    config.retry_on_error = [RedisConnectionError, RedisTimeoutError]
    try:
        return await create_pool(
            config,
            job_serializer=dumps,
            job_deserializer=loads,
            default_queue_name=settings.queue_name,
        )
    except (RedisError, OSError) as exc:
        raise StoreUnavailableError(
            f"cannot reach Redis at {config.host}:{config.port} (db {config.database}): {exc}; "
            "check that it is running and that redis_url is right"
        ) from exc
