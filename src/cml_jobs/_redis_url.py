"""Reading Redis URLs without importing redis: credentials (kept out of logs, and only in
the URL's user info), and ``redis+sentinel://`` URLs, a Redis primary found (and
followed through failovers) by asking Redis Sentinel.

The form is the one Redis-Sentinel-Url defined and RedisVL and docket also read::

    redis+sentinel://[user:password@]host1:port1,host2:port2,host3:port3/service_name[/db]

The hosts are the Sentinels (port 26379 when left out); ``service_name`` is the name the
Sentinels monitor the primary under (``sentinel monitor <service_name> ...``); the user
name and password are the primary's (and its replicas'), not the Sentinels'. This module
only reads the URL (no redis import), so that settings can be checked anywhere.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

from cml_jobs.exceptions import ConfigurationError

__all__ = [
    "SENTINEL_SCHEME",
    "SentinelURL",
    "is_sentinel_url",
    "parse_sentinel_url",
    "redacted",
    "refuse_query_credentials",
]

SENTINEL_SCHEME = "redis+sentinel"
DEFAULT_SENTINEL_PORT = 26379
_FORM = "redis+sentinel://[user:password@]host1:26379,host2:26379/service_name[/db]"


@dataclass(frozen=True, repr=False)
class SentinelURL:
    """What a ``redis+sentinel://`` URL names.

    Attributes:
        sentinels: the Sentinels' (host, port) pairs, in the URL's order.
        service_name: the name the Sentinels monitor the primary under.
        db: the database number on the primary.
        username: the primary's ACL user, if any.
        password: the primary's password, if any (never shown by repr).
    """

    sentinels: tuple[tuple[str, int], ...]
    service_name: str
    db: int = 0
    username: str | None = None
    password: str | None = None

    def __repr__(self) -> str:
        shown = "***" if self.password else None
        return (
            f"SentinelURL(sentinels={self.sentinels!r}, service_name={self.service_name!r}, "
            f"db={self.db!r}, username={self.username!r}, password={shown!r})"
        )


def is_sentinel_url(url: str) -> bool:
    """True for a ``redis+sentinel://`` URL."""
    return url[: len(SENTINEL_SCHEME) + 3].lower() == SENTINEL_SCHEME + "://"


def parse_sentinel_url(url: str) -> SentinelURL:
    """Read a ``redis+sentinel://`` URL.

    Raises:
        ConfigurationError: the URL is not of the form above; the message names the part
            that is wrong and never shows the password.
    """
    if not is_sentinel_url(url):
        raise ConfigurationError(f"expected a URL of the form {_FORM}")
    rest = url[len(SENTINEL_SCHEME) + 3 :]
    rest, _, query = rest.partition("?")
    if query:
        raise ConfigurationError(
            f"a {SENTINEL_SCHEME}:// URL takes no query options (found {sorted(_names(query))!r}); "
            f"use the form {_FORM}"
        )
    netloc, _, path = rest.partition("/")
    credentials, _, hosts = netloc.rpartition("@")
    username, _, password = credentials.partition(":")
    service_name, db = _path(path)
    return SentinelURL(
        sentinels=tuple(_address(entry) for entry in hosts.split(",")),
        service_name=service_name,
        db=db,
        username=unquote(username) or None,
        password=unquote(password) or None,
    )


def _names(query: str) -> set[str]:
    return {part.partition("=")[0] for part in query.split("&") if part}


def _address(entry: str) -> tuple[str, int]:
    """``host``, ``host:port`` or ``[ipv6]:port``."""
    if entry.startswith("["):
        host, _, port = entry[1:].partition("]")
        port = port.removeprefix(":")
    else:
        host, _, port = entry.partition(":")
    if not host:
        raise ConfigurationError(
            f"the Redis URL lists a Sentinel with no host ({entry!r}); use the form {_FORM}"
        )
    if not port:
        return host, DEFAULT_SENTINEL_PORT
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigurationError(
            f"the Sentinel address {entry!r} in the Redis URL has no valid port (expected "
            f"host:port, the port from 1 to 65535); use the form {_FORM}"
        )
    return host, int(port)


def _path(path: str) -> tuple[str, int]:
    """The service name and database from ``service_name[/db]``."""
    service_name, _, db = path.strip("/").partition("/")
    if not service_name:
        raise ConfigurationError(
            "the Redis URL names no Sentinel service (the name in `sentinel monitor <name> "
            f"...`); use the form {_FORM}, e.g. .../mymaster/0"
        )
    if db and not db.isdigit():
        raise ConfigurationError(
            f"the database {db!r} in the Redis URL is not a number; use the form {_FORM}"
        )
    return unquote(service_name), int(db or 0)


def redacted(url: str) -> str:
    """The URL as text that is safe to log: its password (if any) replaced by ``***``.

    Everything up to the last ``@`` is taken as the user and password, so a password with
    an ``@`` that was not percent-encoded does not show either (a ``?password=`` too).
    """
    scheme, separator, rest = url.partition("://")
    if separator and "@" in rest:
        user, colon, _ = rest.rpartition("@")[0].partition(":")
        url = f"{scheme}://{user}{':***' if colon else ''}@{rest.rpartition('@')[2]}"
    return re.sub(r"([?&]password=)[^&#]*", r"\1***", url)


def refuse_query_credentials(url: str) -> None:
    """Refuse a Redis URL whose query carries a password or a user name.

    redis-py reads ``?password=`` but arq, and so a worker, does not; rather than a worker
    that fails where the app connects, one place for credentials: the URL's user info.

    Raises:
        ConfigurationError: the query has ``password`` or ``username``.
    """
    query = url.partition("?")[2].partition("#")[0]
    named = sorted({pair.partition("=")[0] for pair in query.split("&")} & _CREDENTIALS)
    if named:
        raise ConfigurationError(
            f"the Redis URL {redacted(url)!r} gives {' and '.join(named)} in its query, which "
            "workers would ignore; write them before the host instead, percent-encoded: "
            "redis://USER:PASSWORD@host:6379/0"
        )


_CREDENTIALS = {"password", "username"}
