"""Fixtures shared by the whole suite: a real Redis and a real PostgreSQL when they are
reachable, and every store."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from uuid import uuid4

import asyncpg
import pytest
import redis.asyncio
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from cml_jobs.stores._base import ScheduleStore
from cml_jobs.stores.memory import InMemoryScheduleStore
from cml_jobs.stores.postgres import PostgresScheduleStore, open_postgres_store
from cml_jobs.stores.redis import RedisScheduleStore
from tests.ci import unavailable

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/15"
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The Redis the suite may use: ``CML_JOBS_TEST_REDIS_URL``, or database 15 locally."""
    return os.environ.get("CML_JOBS_TEST_REDIS_URL", DEFAULT_REDIS_URL)


def _redisunavailable(url: str, exc: Exception) -> None:
    unavailable(
        f"Redis at {url!r} is unreachable ({exc}); start one "
        "(redis-server --port 6379 --save '' --appendonly no) "
        "or point CML_JOBS_TEST_REDIS_URL at one"
    )


@pytest.fixture(scope="session")
def postgres_server_url() -> str:
    """The PostgreSQL the suite may use: ``CML_JOBS_TEST_POSTGRES_URL``, or the local
    database ``test``."""
    return os.environ.get("CML_JOBS_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)


@pytest.fixture
async def postgres_url(postgres_server_url: str) -> AsyncIterator[str]:
    """A store URL naming a schema of this test's own (``cmljobs_test_<random>``), which
    is dropped afterwards; fails under ``CI=true`` (skips elsewhere) without PostgreSQL."""
    schema = f"cmljobs_test_{uuid4().hex[:10]}"
    try:
        conn = await asyncpg.connect(postgres_server_url, timeout=5)
    except (OSError, asyncio.TimeoutError, asyncpg.PostgresError) as exc:
        unavailable(
            f"PostgreSQL at {postgres_server_url!r} is unreachable ({exc!r}); start one "
            "(make postgres checks it) or point CML_JOBS_TEST_POSTGRES_URL at one"
        )
        raise  # unreachable: _unreachable fails or skips
    separator = "&" if "?" in postgres_server_url else "?"
    try:
        yield f"{postgres_server_url}{separator}schema={schema}"
    finally:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()


@pytest.fixture
async def postgres_store(postgres_url: str) -> AsyncIterator[PostgresScheduleStore]:
    """A PostgreSQL store in a schema of this test's own."""
    async with open_postgres_store(postgres_url) as store:
        yield store


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    """A client of the test Redis, closed after the test."""
    client = redis.asyncio.Redis.from_url(redis_url, socket_connect_timeout=2)
    try:
        await client.ping()
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        await client.aclose()
        _redisunavailable(redis_url, exc)
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


@pytest.fixture(
    params=[
        "memory",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
def store(request: pytest.FixtureRequest) -> Iterator[ScheduleStore]:
    """Every ``ScheduleStore`` implementation, each empty: the contract suite runs on all."""
    if request.param == "memory":
        yield InMemoryScheduleStore()
        return
    if request.param == "postgres":
        yield request.getfixturevalue("postgres_store")
        return
    client: redis.asyncio.Redis = request.getfixturevalue("redis_client")
    yield RedisScheduleStore(client, prefix=request.getfixturevalue("key_prefix"))
