"""What every command shares: where the store is, ``--json``, tables, and exit codes.

Exit codes scripts can use: 0 ok, 1 a check failed or a task was not found (or Redis
cannot be reached), 2 bad usage (click's own).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from cml_jobs._config import ENVIRONMENT, Settings
from cml_jobs._scheduler import BackgroundTaskScheduler
from cml_jobs.exceptions import (
    CmlJobsError,
    ConfigurationError,
    StoreUnavailableError,
    TaskNotFoundError,
)

__all__ = ["Target", "connection_options", "json_option", "open_scheduler", "print_json", "run"]

F = TypeVar("F", bound=Callable[..., Any])

#: Where a command connects when neither an option nor CML_JOBS_REDIS_URL says.
DEFAULT_REDIS_URL = "redis://localhost:6379/0"

# The variables a command reads: those that say where the store is and how descriptors
# are signed. The job modules and the container are a worker's business, not a reader's.
_READ = ("CML_JOBS_REDIS_URL", "CML_JOBS_KEY_PREFIX", "CML_JOBS_QUEUE", "CML_JOBS_SIGNING_KEY")


@dataclass(frozen=True)
class Target:
    """The store a command works on: Redis URL, key prefix, arq queue, signing key."""

    redis_url: str
    key_prefix: str
    queue: str
    signing_key: str | None = None

    @property
    def settings(self) -> Settings:
        """Settings for a scheduler that only reads and acts: it runs no jobs."""
        return Settings(
            redis_url=self.redis_url,
            key_prefix=self.key_prefix,
            queue_name=self.queue,
            signing_key=self.signing_key,
        )


def _environment() -> Settings:
    import os

    try:
        return Settings.from_env({name: os.environ[name] for name in _READ if name in os.environ})
    except ConfigurationError as exc:
        raise click.UsageError(str(exc)) from exc


def connection_options(command: F) -> F:
    """Add ``--redis-url``, ``--key-prefix`` and ``--queue`` (defaults from
    ``CML_JOBS_*``) and hand the command a ``target: Target``."""

    @click.option("--queue", default=None, help="arq queue (default: $CML_JOBS_QUEUE)")
    @click.option(
        "--key-prefix", default=None, help="cml-jobs' key prefix (default: $CML_JOBS_KEY_PREFIX)"
    )
    @click.option(
        "--redis-url",
        default=None,
        help=f"the workers' Redis (default: $CML_JOBS_REDIS_URL, else {DEFAULT_REDIS_URL})",
    )
    @functools.wraps(command)
    def wrapper(
        redis_url: str | None, key_prefix: str | None, queue: str | None, **kwargs: Any
    ) -> Any:
        env = _environment()
        url = redis_url or (env.redis_url if not env.embedded else DEFAULT_REDIS_URL)
        target = Target(
            redis_url=url,
            key_prefix=key_prefix or env.key_prefix,
            queue=queue or env.queue_name,
            signing_key=env.signing_key,
        )
        return command(target=target, **kwargs)

    return wrapper  # type: ignore[return-value]


def json_option(command: F) -> F:
    """Add ``--json``: print JSON for scripts instead of a table."""
    return click.option("--json", "as_json", is_flag=True, help="print JSON for scripts")(command)


def run(coroutine: Coroutine[Any, Any, int | None]) -> None:
    """Run a command's body; turn cml-jobs' errors into a message and exit code 1."""
    try:
        code = asyncio.run(coroutine)
    except TaskNotFoundError as exc:
        click.echo(f"cml-jobs: {exc}", err=True)
        sys.exit(1)
    except StoreUnavailableError as exc:
        click.echo(f"cml-jobs: the store cannot be reached: {exc}", err=True)
        sys.exit(1)
    except CmlJobsError as exc:
        click.echo(f"cml-jobs: {exc}", err=True)
        sys.exit(1)
    except ValueError as exc:  # the bus refused an argument (a window, a note)
        click.echo(f"cml-jobs: {exc}", err=True)
        sys.exit(2)
    sys.exit(code or 0)


@contextlib.asynccontextmanager
async def open_scheduler(target: Target) -> AsyncIterator[BackgroundTaskScheduler]:
    """A scheduler on ``target`` that runs no jobs, started until exit."""
    if target.redis_url.startswith("memory://"):
        raise click.UsageError(
            "memory:// lives inside one process; point --redis-url (or CML_JOBS_REDIS_URL) "
            "at the Redis your workers use"
        )
    scheduler = BackgroundTaskScheduler(target.settings, run_worker=False)
    async with scheduler:
        yield scheduler


def print_json(value: Any) -> None:
    """Print ``value`` as JSON: indented on a terminal, compact for a pipe (10,000 tasks
    print in half the time)."""
    indent = 2 if sys.stdout.isatty() else None
    click.echo(json.dumps(value, indent=indent, default=str))


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table: columns padded to their widest cell, the last one free."""
    widths = [
        max([len(header), *(len(row[i]) for row in rows)]) for i, header in enumerate(headers)
    ]
    lines = []
    for row in [list(headers), *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=False)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


def environment_help() -> str:
    """The variables commands read, for ``--help``."""
    return ", ".join(name for name in _READ if name in ENVIRONMENT)
