"""Connecting to Redis: what a URL asks for, cml-jobs' TLS defaults and its retry policy.

Everything that opens a Redis connection for cml-jobs reads a URL the same way here:
the Redis store's clients, the worker's lease heartbeat and health check, and (through
``connection_options``) the arq settings the worker builds.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import AuthenticationError, NoPermissionError, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from cml_jobs._redis_url import is_sentinel_url, refuse_query_credentials
from cml_jobs.exceptions import (
    ConfigurationError,
    StoreAccessError,
    StoreError,
    StoreUnavailableError,
)
from cml_jobs.stores._redis_checks import STORE_DAMAGED
from cml_jobs.stores._redis_sentinel import sentinel_client

__all__ = [
    "PatientRetry",
    "access_denied",
    "access_message",
    "connection_options",
    "redis_client",
    "retry_options",
    "store_error",
    "tls_options",
    "translated",
]

# The worker's logger: a worker waiting for Redis is what operators watch this log for.
logger = logging.getLogger("cml_jobs.worker")

T = TypeVar("T")

# The TLS options a ``rediss://`` URL may carry in its query, as redis-py's from_url reads
# them too: ``rediss://host:6380/0?ssl_ca_certs=/etc/ssl/redis-ca.pem``.
_TLS_QUERY = ("ssl_cert_reqs", "ssl_check_hostname", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
_CERT_REQS = ("none", "optional", "required")
_FALSE = ("0", "f", "false", "n", "no")  # redis-py's to_bool


class PatientRetry(Retry):
    """Retries forever with backoff, and says so in the log (at most every 10 s), so that an
    operator sees a worker waiting for Redis instead of a silent one. A refused password or
    permission is raised at once: waiting cannot fix it."""

    _last_warning = 0.0

    async def call_with_retry(
        self, do: Callable[[], Awaitable[T]], fail: Callable[[RedisError], Any]
    ) -> T:
        async def noted(error: RedisError) -> None:
            if access_denied(error):  # an AuthenticationError is a ConnectionError too
                raise error
            now = time.monotonic()
            if now - PatientRetry._last_warning >= 10:
                PatientRetry._last_warning = now
                logger.warning("Redis is unavailable (%s); retrying until it is back", error)
            await fail(error)

        return await super().call_with_retry(do, noted)


def access_denied(error: BaseException) -> bool:
    """Whether Redis refused the credentials or a permission (not a transient failure)."""
    if isinstance(error, AuthenticationError | NoPermissionError):
        return True
    said = str(error)
    refusals = ("NOAUTH", "NOPERM", "WRONGPASS", "can't run this command", "no permissions")
    return isinstance(error, ResponseError) and any(word in said for word in refusals)


def access_message(error: BaseException, connection: Mapping[str, Any], command: str) -> str:
    """What to tell when Redis refused ``command``: who was refused, where, and what to
    do; never the password.

    Args:
        error: the refusal (see ``access_denied``).
        connection: the client's connection keywords (``connection_pool.connection_kwargs``).
        command: the command refused, as the operator should read it (``"EVALSHA (poll)"``).
    """
    user, where = connection.get("username") or "default", _where(connection)
    said = str(error).rstrip(".") + "."
    if isinstance(error, AuthenticationError) or "NOAUTH" in said:
        return (
            f"Redis at {where} refused to authenticate user {user!r} (AUTH, connecting for "
            f"{command}): {said} Check the user name and password of the Redis URL "
            "(CML_JOBS_REDIS_URL; percent-encode @ : / ? # % in the password); retrying "
            "cannot help"
        )
    return (
        f"Redis at {where} refused user {user!r} the command {command}: {said} Grant the "
        "user the commands and key patterns of the minimal ACL in docs/security.md (for "
        "this key prefix and queue); retrying cannot help"
    )


def store_error(error: RedisError, connection: Mapping[str, Any], command: str) -> Exception | None:
    """The cml-jobs error a Redis error means for a store call, or None for no translation.

    Args:
        error: what redis-py raised.
        connection: the client's connection keywords.
        command: the store call's command, as the operator should read it.
    """
    if access_denied(error):  # first: a refused password is a ConnectionError too
        return StoreAccessError(access_message(error, connection, command))
    if isinstance(error, ResponseError):
        # Redis refused a command of a script: its data was written around cml-jobs.
        shown = str(error).partition(STORE_DAMAGED)[2].strip() or str(error)
        return StoreError(f"the schedule store's data is damaged: {shown}")
    if isinstance(error, RedisConnectionError | RedisTimeoutError):
        return StoreUnavailableError(
            f"the schedule store cannot reach Redis at {_where(connection)!r} ({error}); "
            "check that Redis is running and that redis_url (CML_JOBS_REDIS_URL for "
            "workers) points to it"
        )
    return None


@contextlib.contextmanager
def translated(client: redis.asyncio.Redis, command: str) -> Iterator[None]:
    """Raise what ``store_error`` makes of a Redis error met by ``command`` on ``client``;
    an error it does not translate is raised as it is."""
    try:
        yield
    except RedisError as exc:
        pool = client.connection_pool
        kwargs = dict(pool.connection_kwargs)
        if hasattr(pool, "service_name"):  # redis+sentinel://
            kwargs["where"] = f"the primary of Sentinel service {pool.service_name!r}"
        error = store_error(exc, kwargs, command)
        if error is None:
            raise
        raise error from exc


def _where(connection: Mapping[str, Any]) -> str:
    if "where" in connection:  # said by the caller (the primary of a Sentinel service)
        return str(connection["where"])
    if "path" in connection:
        return str(connection["path"])
    host, port = connection.get("host", "?"), connection.get("port", "?")
    return f"{host}:{port}/{connection.get('db', 0)}"


def retry_options(*, patient: bool) -> dict[str, Any]:
    """The retry policy of a connection, as ``retry`` and ``retry_on_error`` keywords.

    Args:
        patient: True for a worker's connections, which wait for Redis for as long as it
            takes (a worker does not exit because Redis went away); False for a probe
            that must answer quickly and so never retries.
    """
    if not patient:
        return {"retry_on_error": []}
    return {
        "retry": PatientRetry(ExponentialBackoff(cap=2.0, base=0.05), retries=-1),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError, OSError],
    }


def redis_client(url: str, *, patient: bool, **options: Any) -> redis.asyncio.Redis:
    """A ``redis.asyncio.Redis`` for ``url`` with cml-jobs' TLS defaults and retry policy.

    Args:
        url: a ``redis://``, ``rediss://`` or ``unix://`` URL, or a ``redis+sentinel://``
            one (a client of the primary the Sentinels name, followed through failovers).
        patient: whether commands wait for Redis for as long as it takes (see
            ``retry_options``); a patient client also waits out a Sentinel failover.
        **options: further ``Redis`` keywords, e.g. ``socket_timeout``.

    Raises:
        ConfigurationError: the URL's TLS options are not valid (see ``tls_options``),
            or a ``redis+sentinel://`` URL is not valid.
    """
    # -- Sentinel (redis+sentinel://): same retry policy, the primary found by Sentinel.
    if is_sentinel_url(url):
        return sentinel_client(url, **{**retry_options(patient=patient), **options})
    # -- end Sentinel
    client: redis.asyncio.Redis = redis.asyncio.Redis.from_url(
        url, **{**tls_options(url), **retry_options(patient=patient), **options}
    )
    return client


def connection_options(url: str) -> dict[str, Any]:
    """What ``url`` asks for beyond host, port and database: its user name and password,
    percent-decoded, and its TLS settings with cml-jobs' defaults (see ``tls_options``).

    Raises:
        ConfigurationError: a TLS option on a ``redis://`` URL, or a TLS option's value
            that is not valid (the message never includes the URL).
    """
    refuse_query_credentials(url)
    parts = urlsplit(url)
    return {
        "username": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password else None,
        **_tls(parts.scheme, parts.query),
    }


def tls_options(url: str) -> dict[str, Any]:
    """Keyword arguments for ``redis.asyncio.Redis.from_url(url, **tls_options(url))`` that
    give a plain redis-py client cml-jobs' TLS defaults: with ``rediss://`` the server's
    certificate is verified and so is its hostname, unless the URL's query says otherwise
    (redis-py, like arq, leaves hostnames unchecked). The query may also name the CA and
    a client certificate: ``ssl_cert_reqs`` (``required``, ``optional``, ``none``),
    ``ssl_check_hostname`` (``true``/``false``), ``ssl_ca_certs``, ``ssl_certfile``,
    ``ssl_keyfile``; redis-py reads those from the URL itself.

    Raises:
        ConfigurationError: as ``connection_options``.
    """
    refuse_query_credentials(url)
    parts = urlsplit(url)
    options = _tls(parts.scheme, parts.query)
    return {
        name: options[name] for name in ("ssl_cert_reqs", "ssl_check_hostname") if name in options
    }


def _tls(scheme: str, query: str) -> dict[str, Any]:
    """The TLS settings a URL's scheme and query ask for (none for ``redis://``)."""
    given = {name: values[-1] for name, values in parse_qs(query).items() if name in _TLS_QUERY}
    if scheme != "rediss":
        if given:
            raise ConfigurationError(
                f"the Redis URL sets {sorted(given)!r} but its scheme is {scheme}://; "
                "use rediss:// for TLS"
            )
        return {}
    cert_reqs = given.pop("ssl_cert_reqs", "required").lower()
    if cert_reqs not in _CERT_REQS:
        raise ConfigurationError(
            f"ssl_cert_reqs={cert_reqs!r} in the Redis URL is not valid; use one of {_CERT_REQS!r}"
        )
    check = given.pop("ssl_check_hostname", None)
    check_hostname = cert_reqs != "none" if check is None else check.lower() not in _FALSE
    if check_hostname and cert_reqs == "none":
        raise ConfigurationError(
            "ssl_check_hostname=true in the Redis URL needs a verified certificate; "
            "drop ssl_cert_reqs=none"
        )
    return {"ssl_cert_reqs": cert_reqs, "ssl_check_hostname": check_hostname, **given}
