"""Fixtures shared by the whole suite: a real Redis when one is reachable, and every store."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from uuid import uuid4

import pytest
import redis.asyncio
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from cml_jobs.stores._base import ScheduleStore
from cml_jobs.stores.memory import InMemoryScheduleStore
from cml_jobs.stores.redis import RedisScheduleStore

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/15"


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The Redis the suite may use: ``CML_JOBS_TEST_REDIS_URL``, or database 15 locally."""
    return os.environ.get("CML_JOBS_TEST_REDIS_URL", DEFAULT_REDIS_URL)


def _redis_unreachable(url: str, exc: Exception) -> None:
    message = (
        f"Redis at {url!r} is unreachable ({exc}); start one "
        "(redis-server --port 6379 --save '' --appendonly no) "
        "or point CML_JOBS_TEST_REDIS_URL at one"
    )
    # CI must exercise the Redis store, so a missing server there is a failure, not a skip.
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    """A client of the test Redis, closed after the test."""
    client = redis.asyncio.Redis.from_url(redis_url, socket_connect_timeout=2)
    try:
        await client.ping()
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        await client.aclose()
        _redis_unreachable(redis_url, exc)
    yield client
    await client.aclose()


@pytest.fixture
async def key_prefix(redis_client: redis.asyncio.Redis) -> AsyncIterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards (never FLUSHDB)."""
    prefix = f"test:{uuid4().hex[:8]}:"
    yield prefix
    keys = [key async for key in redis_client.scan_iter(match=f"{prefix}*", count=500)]
    if keys:
        await redis_client.delete(*keys)


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def store(request: pytest.FixtureRequest) -> Iterator[ScheduleStore]:
    """Every ``ScheduleStore`` implementation, each empty: the contract suite runs on all."""
    if request.param == "memory":
        yield InMemoryScheduleStore()
        return
    client: redis.asyncio.Redis = request.getfixturevalue("redis_client")
    yield RedisScheduleStore(client, prefix=request.getfixturevalue("key_prefix"))
