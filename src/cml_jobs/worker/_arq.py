"""The arq host adapter: what cml-jobs asks of arq, in one place.

arq hosts the worker process (``arq cml_jobs.WorkerSettings``: its CLI, signals, health
key, start-up and shut-down hooks); the dispatcher, not arq's queue, decides when a run
starts. With ``dispatch="queue"`` the dispatcher hands its runs to the arq queue instead
of running them itself: each travels as an arq job of one function, ``cml_jobs.run``,
whose argument is a small JSON payload (the run, its trace context and its descriptor as
stored). Payloads and results are JSON: nothing is unpickled.
"""

from __future__ import annotations

import json
import logging
import sys
from collections import OrderedDict
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import fields
from datetime import timedelta
from typing import Any, NotRequired, TypedDict, cast

from arq import func
from arq.connections import ArqRedis, RedisSettings

from cml_jobs._decide import HANDOFF_DELAY
from cml_jobs._execution import Assignment
from cml_jobs._redis_url import is_sentinel_url, parse_sentinel_url
from cml_jobs._runtime import Engine, Runtime
from cml_jobs._timing import from_ms, to_ms
from cml_jobs.exceptions import InvalidDescriptorError
from cml_jobs.stores import Finish, Outcome, Run
from cml_jobs.stores.redis import (
    access_denied,
    access_message,
    connection_options,
    retry_options,
    sentinel_client,
)

__all__ = [
    "ARQ_JOB_TIMEOUT",
    "FUNCTION_NAME",
    "ArqSink",
    "SafeRedisSettings",
    "WorkerContext",
    "dumps",
    "loads",
    "redis_pool",
    "redis_settings",
    "run_function",
]

logger = logging.getLogger("cml_jobs.worker")

FUNCTION_NAME = "cml_jobs.run"
#: Tasks whose hand-on this worker has logged (a rolling deploy may take minutes).
_HANDED_ON: OrderedDict[str, None] = OrderedDict()
# arq's own timeout must never cut a run short: runs have their own per-task timeout.
ARQ_JOB_TIMEOUT = timedelta(days=1)


class WorkerContext(TypedDict, total=False):
    """The part of arq's ``ctx`` that cml-jobs uses."""

    cml_jobs: Engine
    cml_jobs_failure: str  # why the worker stops (Redis refused its credentials)
    cml_jobs_exit: AsyncExitStack  # stops the engine, the runtime and the event publisher
    redis: ArqRedis
    job_id: str


class _Payload(TypedDict):
    t: str  # task id
    f: int  # fence
    o: int  # occurrence, epoch ms
    a: int  # attempt
    c: str | None  # W3C traceparent of the span that scheduled the task
    d: str  # the descriptor, as stored
    x: NotRequired[bool]  # an extra run (trigger_task, backfill)


def dumps(value: Any) -> bytes:
    """arq's job serializer: JSON, never pickle."""
    return json.dumps(value, separators=(",", ":"), default=str).encode()


def loads(raw: bytes) -> Any:
    """arq's job deserializer: JSON, never pickle."""
    return json.loads(raw)


class ArqSink:
    """Hands claimed runs to the arq queue, for any worker to take (``dispatch="queue"``).

    Args:
        runtime: this worker's runtime (its codec writes the descriptors).
        pool: the arq Redis pool.
    """

    def __init__(self, runtime: Runtime, pool: ArqRedis) -> None:
        self.runtime = runtime
        self.pool = pool

    def room(self) -> int:
        """The queue takes a full batch every tick."""
        return self.runtime.settings.batch_size

    async def submit(self, assignments: Sequence[Assignment]) -> None:
        """Enqueue one arq job per run; the same run always has the same arq job id."""
        codec = self.runtime.codec
        for assignment in assignments:
            run = assignment.run
            payload: _Payload = {
                "t": run.task_id,
                "f": run.fence,
                "o": to_ms(run.occurrence_at),
                "a": run.attempt,
                "c": assignment.trace_context,
                "d": codec.encode(assignment.descriptor),
            }
            if run.extra:
                payload["x"] = True
            await self._enqueue(payload, f"cml:{run.task_id}:{payload['o']}:{run.fence}")

    async def _enqueue(
        self, payload: _Payload, job_id: str, defer: timedelta | None = None
    ) -> None:
        queue = self.runtime.settings.queue_name
        await self.pool.enqueue_job(
            FUNCTION_NAME, payload, _job_id=job_id, _queue_name=queue, _defer_by=defer
        )


async def _run(ctx: WorkerContext, payload: _Payload) -> None:
    """The arq function: execute one queued run in this worker, if it is still valid."""
    engine = ctx["cml_jobs"]
    runtime = engine.runtime
    run = Run(
        payload["t"], payload["f"], from_ms(payload["o"]), payload["a"], payload.get("x", False)
    )
    try:
        descriptor = runtime.codec.decode(payload["d"])
    except InvalidDescriptorError as exc:
        await runtime.store.finish([Finish(run, Outcome.PARKED, f"queued run is invalid: {exc}")])
        return
    lease_until = runtime.clock.now() + runtime.settings.lease
    [valid] = await runtime.store.extend([run], lease_until=lease_until)
    if not valid:  # cancelled, or re-issued after a lost lease, while it was queued
        logger.info("queued run of task %r is no longer valid; skipped", run.task_id)
    elif descriptor.name in runtime.registry:
        await engine.executor.execute(Assignment(run, descriptor, payload["c"]))
    else:
        await _hand_on(ctx, run, payload, descriptor.name)


async def _hand_on(ctx: WorkerContext, run: Run, payload: _Payload, job_name: str) -> None:
    """This worker lacks the job (a rolling deploy): put the run back on the queue for a
    worker that has it, or park the task once no worker has run it for the grace."""
    runtime = ctx["cml_jobs"].runtime
    waited = runtime.clock.now() - run.occurrence_at
    if waited > runtime.settings.unknown_job_grace:
        reason = (
            f"no worker has run job {job_name!r} for {waited.total_seconds():.0f} s; "
            "deploy a worker whose modules include it, then reschedule the task"
        )
        await runtime.store.finish([Finish(run, Outcome.PARKED, reason)])
        return
    if run.task_id not in _HANDED_ON:  # one line per task, not one per hand-on
        _HANDED_ON[run.task_id] = None
        if len(_HANDED_ON) > 1024:
            _HANDED_ON.popitem(last=False)
        logger.info(
            "job %r of task %r is not registered in this worker; handing it on",
            job_name,
            run.task_id,
        )
    job_id = f"{ctx.get('job_id', 'cml')}:h{to_ms(runtime.clock.now())}"
    await ArqSink(runtime, ctx["redis"])._enqueue(payload, job_id, HANDOFF_DELAY)


run_function = func(
    _run,  # type: ignore[arg-type]
    name=FUNCTION_NAME,
    timeout=ARQ_JOB_TIMEOUT.total_seconds(),
    keep_result=0,
    max_tries=1,
)


class SafeRedisSettings(RedisSettings):
    """arq's ``RedisSettings`` whose repr never shows the password (arq's own repr does),
    and that stops a worker at once when Redis refuses its password or permissions."""

    @property
    def conn_retries(self) -> int:
        """How many times arq retries connecting: none when Redis refused the credentials."""
        # arq's create_pool reads this in its ``except`` block, after a failed PING, and
        # retries whatever failed; a refused password or permission is not transient.
        failure = sys.exc_info()[1]
        if failure is not None and access_denied(failure):
            where = {"username": self.username, "host": self.host, "port": self.port}
            message = access_message(failure, {**where, "db": self.database}, "PING")
            logger.critical("cml-jobs worker stops: %s", message)
            raise SystemExit(f"cml-jobs worker stopped: {message}")
        return self._conn_retries

    @conn_retries.setter
    def conn_retries(self, value: int) -> None:
        self._conn_retries = value

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{name.lstrip('_')}={'***' if name == 'password' and value else repr(value)}"
            for name, value in self.__dict__.items()
        )
        return f"RedisSettings({shown})"

    __str__ = __repr__


def redis_settings(url: str) -> RedisSettings:
    """arq settings for ``url`` that never give up on Redis and never show its password.

    A worker started before Redis is up keeps trying to connect, and a command that
    fails because Redis went away is retried with backoff until it is back: a worker does
    not exit because of Redis. The user name, password and TLS settings are read from
    the URL as for every cml-jobs connection (``cml_jobs.stores.redis.connection_options``:
    percent-decoded credentials, which arq does not decode, and hostnames verified with
    ``rediss://``, which arq does not do by default).

    Raises:
        ConfigurationError: a TLS option on a ``redis://`` URL, or a TLS option's value
            that is not valid (the message never includes the URL); a
            ``redis+sentinel://`` URL that is not valid.
    """
    if is_sentinel_url(url):
        return _sentinel_settings(url)
    parsed = RedisSettings.from_dsn(url)
    settings = SafeRedisSettings(**{f.name: getattr(parsed, f.name) for f in fields(parsed)})
    options = {**connection_options(url), **retry_options(patient=True)}
    for name, value in options.items():
        setattr(settings, name, value)
    settings.conn_retries = 1_000_000_000
    settings.conn_retry_delay = 1
    return settings


def _sentinel_settings(url: str) -> RedisSettings:
    """arq's own Sentinel settings for a ``redis+sentinel://`` URL: what ``arq --check``
    connects with. The worker itself runs on ``redis_pool(url, ...)``."""
    target = parse_sentinel_url(url)
    return SafeRedisSettings(
        host=list(target.sentinels),
        database=target.db,
        username=target.username,
        password=target.password,
        sentinel=True,
        sentinel_master=target.service_name,
    )


def redis_pool(url: str, queue_name: str) -> ArqRedis | None:
    """The worker's arq pool for a ``redis+sentinel://`` URL; None for any other URL (arq
    builds the pool from ``redis_settings``).

    arq's own Sentinel pool gives its connections no retry policy, so the first command
    cut off by a failover would end the worker. This pool retries as every worker
    connection does (``retry_options(patient=True)``) and asks the Sentinels for the
    primary at each new connection, so the worker follows the primary through a failover.
    The pool connects lazily, in the worker's event loop.

    Raises:
        ConfigurationError: the URL is not a valid ``redis+sentinel://`` URL.
    """
    if not is_sentinel_url(url):
        return None
    client = sentinel_client(url, redis_class=ArqRedis, **retry_options(patient=True))
    pool = cast(ArqRedis, client)  # an instance of a subclass of redis_class
    pool.job_serializer = dumps
    pool.job_deserializer = loads
    pool.default_queue_name = queue_name
    return pool
