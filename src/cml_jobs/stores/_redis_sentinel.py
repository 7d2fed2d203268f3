"""Clients for a primary that Redis Sentinel names (``redis+sentinel://`` URLs).

The client asks the Sentinels for the primary's address whenever it opens a connection,
so after a failover its next connection reaches the new primary. A command cut off by
the failover fails with a connection error (the old primary is gone, or it answers as a
replica: redis-py turns that ``READONLY`` reply into a connection error too), which a
patient client retries like any lost connection until the Sentinels name the new primary.
"""

from __future__ import annotations

import functools
from typing import Any, TypeVar

import redis.asyncio
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelManagedConnection
from redis.backoff import NoBackoff

from cml_jobs._redis_url import parse_sentinel_url

__all__ = ["sentinel_client"]

R = TypeVar("R", bound=redis.asyncio.Redis)

_SENTINEL_TIMEOUTS = {"socket_connect_timeout": 2.0, "socket_timeout": 2.0}


class _FailoverConnection(SentinelManagedConnection):
    """A connection to the primary that asks the Sentinels again on every attempt.

    redis-py retries a connection attempt with the connection's own retry policy, which
    for a patient client never gives up: it would knock forever on the door of a primary
    that died, while the Sentinels already name its successor. Here one address gets one
    attempt; the retry around it (``connect``) asks the Sentinels before the next.
    """

    async def connect_to(self, address: tuple[str, int]) -> None:
        patient, self.retry = self.retry, Retry(NoBackoff(), 0)
        try:
            await super().connect_to(address)  # type: ignore[no-untyped-call]
        finally:
            self.retry = patient


class _ClosesSentinels(redis.asyncio.Redis):
    """Closing the client also closes its connections to the Sentinels (redis-py leaves
    them open), so that an app or a test that closes its client leaves nothing behind."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        for sentinel in self.connection_pool.sentinel_manager.sentinels:  # type: ignore[attr-defined]
            await sentinel.aclose()


@functools.cache
def _closing(redis_class: type[R]) -> type[R]:
    name = f"Sentinel{redis_class.__name__}"
    return type(name, (_ClosesSentinels, redis_class), {"__module__": __name__})


def sentinel_client(
    url: str, *, redis_class: type[redis.asyncio.Redis] = redis.asyncio.Redis, **options: Any
) -> redis.asyncio.Redis:
    """A client of the primary that the Sentinels of a ``redis+sentinel://`` URL name.

    Args:
        url: ``redis+sentinel://[user:password@]host1:26379,host2:26379/service[/db]``.
        redis_class: the client's class (arq's ``ArqRedis`` for a worker's pool).
        **options: ``redis.asyncio.Redis`` keywords for the connections to the primary:
            the retry policy, ``socket_timeout``; the ``socket_*`` ones also apply to the
            connections to the Sentinels (2 s timeouts by default).

    Raises:
        ConfigurationError: the URL is not a valid ``redis+sentinel://`` URL.
    """
    target = parse_sentinel_url(url)
    # A Sentinel that does not answer must not hold up asking the next one.
    asking = {**_SENTINEL_TIMEOUTS, **{k: v for k, v in options.items() if k.startswith("socket_")}}
    sentinels = Sentinel(  # type: ignore[no-untyped-call]
        list(target.sentinels),
        sentinel_kwargs=asking,
        db=target.db,
        username=target.username,
        password=target.password,
        **options,
    )
    client: redis.asyncio.Redis = sentinels.master_for(
        target.service_name,
        redis_class=_closing(redis_class),
        connection_class=_FailoverConnection,
    )
    return client
