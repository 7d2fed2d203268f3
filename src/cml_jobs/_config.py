"""Settings shared by the scheduler and the workers, and how they are read from the environment."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import timedelta
from typing import Any

from cml_jobs._imports import load_object
from cml_jobs._redis_url import (
    SENTINEL_SCHEME,
    is_sentinel_url,
    parse_sentinel_url,
    redacted,
    refuse_query_credentials,
)
from cml_jobs.exceptions import ConfigurationError

__all__ = [
    "ENVIRONMENT",
    "Settings",
]


@dataclass(frozen=True, repr=False)
class Settings:
    """Everything a cml-jobs process is configured with.

    Attributes:
        redis_url: ``memory://`` (the embedded default: one process, nothing kept) or a
            ``redis://`` / ``rediss://`` / ``unix://`` URL shared by the app and its workers,
            or ``redis+sentinel://[user:password@]host1:26379,host2:26379/service[/db]``
            for a primary that Redis Sentinel names (followed through failovers).
        modules: modules (packages recursively) scanned for ``@backgroundjob`` classes.
        container: a dependency-injector container, handed to jobs' ``configure``.
        key_prefix: prefix of every Redis key cml-jobs writes.
        queue_name: the arq queue runs travel on.
        max_jobs: runs one worker executes at once.
        poll_interval: longest time the dispatcher sleeps between looks at the schedule.
        queue_poll_delay: how often an arq worker polls its queue.
        lease: how long a run may go without a heartbeat before another worker re-runs it;
            the heartbeat renews it every third of it, from a thread of its own.
        batch_size: most tasks claimed per dispatcher tick.
        unknown_job_grace: how long a run whose job no worker knows waits before its task
            is parked (rolling deploys).
        drain_timeout: how long stopping waits for running jobs before cancelling them.
        dispatch: ``"local"`` (the default): a worker runs what it claims itself, up to
            ``max_jobs`` at once, and leaves tasks of jobs it lacks to workers that have
            them; ``"queue"``: a worker process's runs go through the arq queue to
            whichever worker polls first (an app's ``run_worker`` always runs locally).
        history_size: runs kept in each task's history (``get_history``), newest first.
        history_retention: how long a task that ended (a one-time task after its run)
            stays listed with its outcome and history.
        signing_key: sign every stored descriptor with HMAC-SHA256 under this key, and
            run only descriptors whose signature matches (the key never goes to Redis).
        store_url: where tasks are kept, when not in ``redis_url``: a
            ``postgresql://user@host:5432/database`` URL (``?schema=name`` for a schema
            other than ``cml_jobs``) keeps them in PostgreSQL; workers still use
            ``redis_url`` for arq. None (the default): the store is ``redis_url``.
    """

    redis_url: str = "memory://"
    modules: tuple[str, ...] = ()
    container: Any = None
    key_prefix: str = "cml:"
    queue_name: str = "cml_jobs:queue"
    max_jobs: int = 50
    poll_interval: timedelta = timedelta(seconds=1)
    queue_poll_delay: timedelta = timedelta(milliseconds=500)
    lease: timedelta = timedelta(seconds=6)
    batch_size: int = 500
    unknown_job_grace: timedelta = timedelta(minutes=5)
    drain_timeout: timedelta = timedelta(seconds=30)
    dispatch: str = "local"
    history_size: int = 100
    history_retention: timedelta = timedelta(days=7)
    signing_key: str | None = field(default=None, repr=False)
    store_url: str | None = None

    def __repr__(self) -> str:
        # Never the password in a URL, nor the signing key (its field is repr=False).
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.repr}
        values["redis_url"] = redacted(self.redis_url)
        if self.store_url is not None:
            values["store_url"] = redacted(self.store_url)
        return "Settings(" + ", ".join(f"{name}={value!r}" for name, value in values.items()) + ")"

    def __post_init__(self) -> None:
        refuse_query_credentials(self.redis_url)

    @property
    def embedded(self) -> bool:
        """True for the ``memory://`` mode: the store lives in this process."""
        return self.store_kind == "memory"

    @property
    def store_location(self) -> str:
        """The URL of the store: ``store_url``, or ``redis_url`` when it is None."""
        return self.redis_url if self.store_url is None else self.store_url

    @property
    def store_kind(self) -> str:
        """``"memory"``, ``"redis"`` or ``"postgresql"``: which store the settings name."""
        scheme = self.store_location.partition("://")[0]
        if scheme in _POSTGRES_SCHEMES:
            return "postgresql"
        return "memory" if scheme == "memory" else "redis"

    def with_changes(self, **changes: Any) -> Settings:
        """A copy with some settings changed; unknown names are refused."""
        if changes.get("dispatch", "local") not in ("local", "queue"):
            raise ConfigurationError(
                f"dispatch={changes['dispatch']!r} is not a dispatch mode; use 'local' or 'queue'"
            )
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ConfigurationError(
                f"unknown setting(s) {unknown!r}; known settings are {sorted(known)!r}"
            )
        return replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from ``CML_JOBS_*`` environment variables (see ``ENVIRONMENT``)."""
        env = os.environ if environ is None else environ
        changes: dict[str, Any] = {}
        for variable, (name, parse, _) in ENVIRONMENT.items():
            raw = env.get(variable)
            if raw is None or raw == "":
                continue
            try:
                changes[name] = parse(raw)
            except (ValueError, OverflowError, ImportError, AttributeError) as exc:
                # A URL's password never reaches the message (nor the logs it ends up in).
                raise ConfigurationError(
                    f"{variable}={redacted(raw)!r} is not valid: {exc}"
                ) from exc
        return cls().with_changes(**changes)


def _seconds(raw: str) -> timedelta:
    value = float(raw)
    if not math.isfinite(value) or value <= 0:
        raise ValueError("expected a positive number of seconds")
    return timedelta(seconds=value)


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise ValueError("expected a positive whole number")
    return value


_URL_SCHEMES = ("redis", "rediss", "unix", SENTINEL_SCHEME, "memory")
_POSTGRES_SCHEMES = ("postgresql", "postgres")
_DISPATCH_MODES = ("local", "queue")


def _url(raw: str, schemes: tuple[str, ...], example: str) -> str:
    scheme, separator, _ = raw.partition("://")
    if not separator or scheme not in schemes:
        raise ValueError(
            f"expected a URL such as {example} (schemes: "
            + ", ".join(f"{name}://" for name in schemes)
            + ")"
        )
    if is_sentinel_url(raw):
        try:
            parse_sentinel_url(raw)
        except ConfigurationError as exc:  # from_env names the variable and the URL
            raise ValueError(str(exc)) from exc
    return raw


def _redis_url(raw: str) -> str:
    return _url(raw, _URL_SCHEMES, "redis://host:6379/0")


def _store_url(raw: str) -> str:
    return _url(raw, (*_POSTGRES_SCHEMES, *_URL_SCHEMES), "postgresql://host:5432/database")


def _dispatch(raw: str) -> str:
    if raw not in _DISPATCH_MODES:
        raise ValueError(f"expected one of {_DISPATCH_MODES!r}")
    return raw


def _modules(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _container(raw: str) -> Any:
    factory = load_object(raw)
    return factory() if isinstance(factory, type) else factory


#: Every environment variable a worker reads: variable -> (setting, parser, meaning).
ENVIRONMENT: dict[str, tuple[str, Callable[[str], Any], str]] = {
    "CML_JOBS_REDIS_URL": (
        "redis_url",
        _redis_url,
        "Redis URL (redis://, rediss://, unix://, redis+sentinel://)",
    ),
    "CML_JOBS_STORE_URL": (
        "store_url",
        _store_url,
        "where tasks are kept when not in Redis: postgresql://user@host:5432/db[?schema=name]",
    ),
    "CML_JOBS_MODULES": ("modules", _modules, "comma-separated modules to scan for jobs"),
    "CML_JOBS_CONTAINER": (
        "container",
        _container,
        "dependency-injector container, 'pkg.module:Container' (a class is instantiated)",
    ),
    "CML_JOBS_KEY_PREFIX": ("key_prefix", str, "prefix of cml-jobs' Redis keys (default cml:)"),
    "CML_JOBS_QUEUE": ("queue_name", str, "arq queue name (default cml_jobs:queue)"),
    "CML_JOBS_MAX_JOBS": (
        "max_jobs",
        _positive_int,
        "runs executed at once per worker (default 50)",
    ),
    "CML_JOBS_POLL_INTERVAL": (
        "poll_interval",
        _seconds,
        "longest dispatcher sleep, seconds (default 1)",
    ),
    "CML_JOBS_QUEUE_POLL_DELAY": (
        "queue_poll_delay",
        _seconds,
        "arq queue poll delay, seconds (default 0.5)",
    ),
    "CML_JOBS_LEASE": ("lease", _seconds, "run lease, seconds (default 6)"),
    "CML_JOBS_BATCH_SIZE": ("batch_size", _positive_int, "tasks claimed per tick (default 500)"),
    "CML_JOBS_UNKNOWN_JOB_GRACE": (
        "unknown_job_grace",
        _seconds,
        "seconds before a task whose job no worker knows is parked (default 300)",
    ),
    "CML_JOBS_DISPATCH": (
        "dispatch",
        _dispatch,
        "local (run claimed occurrences in the claiming worker) or queue (default local)",
    ),
    "CML_JOBS_SIGNING_KEY": (
        "signing_key",
        str,
        "HMAC key: descriptors are signed, and unsigned or tampered ones parked (default off)",
    ),
    "CML_JOBS_HISTORY_SIZE": (
        "history_size",
        _positive_int,
        "runs kept in each task's history (default 100)",
    ),
    "CML_JOBS_HISTORY_RETENTION": (
        "history_retention",
        _seconds,
        "seconds an ended task stays listed with its history (default 604800: 7 days)",
    ),
    "CML_JOBS_DRAIN_TIMEOUT": (
        "drain_timeout",
        _seconds,
        "seconds to let running jobs finish on stop (default 30)",
    ),
}
