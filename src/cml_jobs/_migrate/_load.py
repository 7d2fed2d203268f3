"""Reading the jobs of an APScheduler 3 job store, through APScheduler's own classes.

APScheduler 3 pickles its jobs, so restoring one unpickles data from that store: point
this only at a store you trust. The unpickling happens inside APScheduler's job store
classes; cml-jobs itself never unpickles anything.

The source store is only read. Its ``get_all_jobs`` deletes every job it cannot restore
(a callable that no longer imports, say), so jobs are listed by id and restored one by
one with ``lookup_job``, which deletes nothing; a job that cannot be restored is refused
with APScheduler's reason, and stays in its store.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from cml_jobs._migrate._convert import Refused

__all__ = ["Source", "load_jobs", "redis_connect_args"]


@dataclass(frozen=True)
class Source:
    """Which APScheduler job store to read: a Redis one or an SQLAlchemy one.

    Attributes:
        redis_url: the Redis of a ``RedisJobStore`` (``redis://``, ``rediss://``, ``unix://``).
        jobs_key: its ``jobs_key``.
        run_times_key: its ``run_times_key``.
        sqlalchemy_url: the database of an ``SQLAlchemyJobStore``.
        tablename: its ``tablename``.
        tableschema: its ``tableschema``.
    """

    redis_url: str | None = None
    jobs_key: str = "apscheduler.jobs"
    run_times_key: str = "apscheduler.run_times"
    sqlalchemy_url: str | None = None
    tablename: str = "apscheduler_jobs"
    tableschema: str | None = None


def load_jobs(source: Source) -> list[Any]:
    """Every job in the store, ordered by id: an ``apscheduler.job.Job``, or a ``Refused``
    for one APScheduler cannot restore. Nothing in the store is changed.

    Raises:
        ValueError: the source names no store, or two; or the SQL table does not exist.
    """
    with _open(source) as (store, ids):
        return [_restore(store, job_id) for job_id in sorted(ids)]


def _restore(store: Any, job_id: str) -> Any:
    try:
        job = store.lookup_job(job_id)
    except Exception as exc:
        return Refused(
            job_id,
            "",
            f"APScheduler cannot restore it ({type(exc).__name__}: {exc}); run the migration "
            "where the job's callable and its arguments' classes import",
        )
    if job is None:  # removed between listing and reading
        return Refused(job_id, "", "the job disappeared from the store while it was read")
    return job


@contextmanager
def _open(source: Source) -> Iterator[tuple[Any, list[str]]]:
    if (source.redis_url is None) == (source.sqlalchemy_url is None):
        raise ValueError("name one APScheduler job store: --redis-url or --sqlalchemy-url")
    if source.redis_url is not None:
        from apscheduler.jobstores.redis import RedisJobStore

        store = RedisJobStore(
            jobs_key=source.jobs_key,
            run_times_key=source.run_times_key,
            **redis_connect_args(source.redis_url),
        )
        try:
            yield store, [_text(key) for key in store.redis.hkeys(source.jobs_key)]
        finally:
            store.shutdown()
        return
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore

    # start() is never called: it would create the table when it is missing.
    store = SQLAlchemyJobStore(
        url=source.sqlalchemy_url, tablename=source.tablename, tableschema=source.tableschema
    )
    try:
        yield store, _sql_ids(store, source)
    finally:
        store.shutdown()


def _sql_ids(store: Any, source: Source) -> list[str]:
    from sqlalchemy import inspect, select

    with store.engine.connect() as connection:
        if not inspect(connection).has_table(source.tablename, schema=source.tableschema):
            raise ValueError(
                f"no table {source.tablename!r} in the database; pass the SQLAlchemyJobStore's "
                "tablename with --tablename (and its schema with --tableschema)"
            )
        return [str(row[0]) for row in connection.execute(select(store.jobs_t.c.id))]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def redis_connect_args(url: str) -> dict[str, Any]:
    """A Redis URL as the keyword arguments ``RedisJobStore`` passes to ``redis.Redis``.

    Raises:
        ValueError: not a ``redis://``, ``rediss://`` or ``unix://`` URL.
    """
    parts = urlsplit(url)
    query = {name: values[-1] for name, values in parse_qs(parts.query).items()}
    args: dict[str, Any] = {}
    if parts.username:
        args["username"] = unquote(parts.username)
    if parts.password:
        args["password"] = unquote(parts.password)
    if parts.scheme == "unix":
        args["unix_socket_path"] = parts.path
        args["db"] = int(query.get("db", "0"))
        return args
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(
            f"{parts.scheme + '://'!r} is not a Redis URL; use redis://host:6379/0, "
            "rediss://... or unix:///path/to/socket?db=0"
        )
    args.update(host=parts.hostname or "localhost", port=parts.port or 6379)
    args["db"] = int(parts.path.strip("/") or query.get("db", "0"))
    if parts.scheme == "rediss":
        args["ssl"] = True
    return args
