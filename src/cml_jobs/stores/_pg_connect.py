"""Connecting to PostgreSQL: what a store URL asks for, which errors mean the server is
away, opening a pool (patiently, for a worker), and the LISTEN connection that wakes a
dispatcher when a task is scheduled anywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from cml_jobs.exceptions import ConfigurationError, StoreUnavailableError
from cml_jobs.stores._pg_schema import Conn, check_schema_name

__all__ = [
    "DEFAULT_SCHEMA",
    "TRANSIENT",
    "UNAVAILABLE",
    "listening",
    "open_pool",
    "parse_url",
    "transact",
    "unavailable",
    "where",
]

# The worker's logger: a worker waiting for its store is what operators watch it for.
logger = logging.getLogger("cml_jobs.worker")

DEFAULT_SCHEMA = "cml_jobs"

#: The server is away (down, restarting, unreachable): retry, or report it unavailable.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,  # class 08, connection lost mid-call
    asyncpg.exceptions.OperatorInterventionError,  # 57: shutting down, starting up
)
#: The transaction lost a race with another (a deadlock, a serialization failure): the
#: database undid it whole, so running it again is safe.
TRANSIENT: tuple[type[BaseException], ...] = (asyncpg.exceptions.TransactionRollbackError,)

_SCHEMES = ("postgresql", "postgres")

# An app's calls fail after this many retries with StoreUnavailableError, unlike a
# worker's, which wait for PostgreSQL for as long as it takes.
_APP_RETRIES = 3

T = TypeVar("T")


def parse_url(url: str) -> tuple[str, str]:
    """The DSN asyncpg connects with, and the store's schema (the ``schema`` query
    parameter of ``url``, ``cml_jobs`` without it).

    Raises:
        ConfigurationError: not a PostgreSQL URL, or a schema that cannot be one.
    """
    parts = urlsplit(url)
    if parts.scheme not in _SCHEMES:
        raise ConfigurationError(
            f"{where(url)!r} is not a PostgreSQL URL; expected "
            "postgresql://user@host:5432/database (optionally ?schema=name)"
        )
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = next((value for name, value in query if name == "schema"), DEFAULT_SCHEMA)
    rest = urlencode([(name, value) for name, value in query if name != "schema"])
    return urlunsplit(parts._replace(query=rest)), check_schema_name(schema)


def where(url: str) -> str:
    """``host:port/database`` of a URL, with no user or password, for messages."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    return f"{host}:{parts.port or 5432}{parts.path or '/'}"


async def _connect_pool(dsn: str) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=10, timeout=5)
    assert pool is not None
    return pool


async def open_pool(dsn: str, *, patient: bool) -> asyncpg.Pool:
    """A connection pool for ``dsn``; with ``patient``, wait for the server as long as it
    takes (a worker started before its database), saying so every 10 s.

    Raises:
        OSError, asyncpg.PostgresError: the server cannot be reached (not patient).
    """
    backoff, warned = 0.05, 0.0
    while True:
        try:
            return await _connect_pool(dsn)
        except UNAVAILABLE as exc:
            if not patient:
                raise
            if time.monotonic() - warned >= 10:
                warned = time.monotonic()
                logger.warning(
                    "PostgreSQL at %s is unavailable (%s); waiting for it", where(dsn), exc
                )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)


@contextlib.asynccontextmanager
async def listening(dsn: str, channel: str, callback: Callable[[], None]) -> AsyncIterator[None]:
    """Call ``callback`` on every notification on ``channel`` until exit, from a
    connection of its own that is opened again whenever it is lost (``callback`` is also
    called then: notifications sent meanwhile were missed)."""
    task = asyncio.create_task(_listen(dsn, channel, callback), name="cml-jobs-pg-listen")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _listen(dsn: str, channel: str, callback: Callable[[], None]) -> None:
    backoff = 0.05
    while True:
        try:
            conn = await asyncpg.connect(dsn, timeout=5)
        except UNAVAILABLE:
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)
            continue
        backoff = 0.05
        try:
            await _listen_on(conn, channel, callback)
        except UNAVAILABLE:
            pass
        finally:
            with contextlib.suppress(*UNAVAILABLE, asyncpg.InterfaceError):
                await asyncio.wait_for(conn.close(), 2)


async def _listen_on(conn: asyncpg.Connection, channel: str, callback: Callable[[], None]) -> None:
    lost = asyncio.Event()
    conn.add_termination_listener(lambda _: lost.set())
    await conn.add_listener(channel, lambda *_: callback())
    callback()  # anything scheduled while no connection was listening
    await _until_lost(conn, lost)


async def _until_lost(conn: asyncpg.Connection, lost: asyncio.Event) -> None:
    # A server that vanishes without closing the socket is noticed by the query below.
    while not lost.is_set() and not conn.is_closed():
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(lost.wait(), 5)
            return
        await conn.execute("SELECT 1", timeout=5)


def unavailable(dsn: str, exc: BaseException) -> StoreUnavailableError:
    """The error an app gets when PostgreSQL is away."""
    return StoreUnavailableError(
        f"the schedule store cannot reach PostgreSQL at {where(dsn)!r} ({exc!r}); check that "
        "PostgreSQL is running and that store_url (CML_JOBS_STORE_URL for workers) points to it"
    )


async def transact(
    pool: asyncpg.Pool | Any,
    work: Callable[[Conn], Awaitable[T]],
    *,
    patient: bool,
    dsn: str,
    single: bool = False,
) -> T:
    """``work`` in a transaction of its own; run again after a lost race, and after the
    server was away (patient: until it is back; else a few times, then
    ``StoreUnavailableError``). ``single``: ``work`` is one statement, atomic by itself,
    which a pool's connection runs without BEGIN and COMMIT. On an app's connection (not
    a pool), the transaction is nested in the app's and nothing is retried: the app's
    transaction decides."""
    failures, warned = 0, 0.0
    while True:
        try:
            if not isinstance(pool, asyncpg.Pool):
                async with pool.transaction():
                    return await work(pool)
            async with pool.acquire() as conn:
                if single:
                    return await work(conn)
                async with conn.transaction():
                    return await work(conn)
        except TRANSIENT:
            if not isinstance(pool, asyncpg.Pool):
                raise
        except UNAVAILABLE as exc:
            failures += 1
            if not isinstance(pool, asyncpg.Pool) or not (patient or failures <= _APP_RETRIES):
                raise unavailable(dsn, exc) from exc
            if patient and time.monotonic() - warned >= 10:
                warned = time.monotonic()
                logger.warning("PostgreSQL at %s is unavailable (%s); retrying", where(dsn), exc)
            await asyncio.sleep(min(0.05 * 2**failures, 2.0))
