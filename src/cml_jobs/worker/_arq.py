"""Everything cml-jobs asks of arq: the run function, the queue sink, the worker settings.

Runs travel as arq jobs of one function, ``cml_jobs.run``, whose only argument is a small
JSON payload (task id, fence, occurrence, attempt, job name); the arq job id is derived
from the task, the occurrence and the fence, so submitting a run twice queues it once.
Payloads and results are JSON: nothing is unpickled.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import fields
from datetime import timedelta
from typing import Any, TypedDict
from uuid import uuid4

import arq.worker
from arq import func
from arq.connections import ArqRedis, RedisSettings
from redis.exceptions import ResponseError

from cml_jobs._descriptors import TaskDescriptor
from cml_jobs._execution import Handoff
from cml_jobs._runtime import Runtime
from cml_jobs._timing import from_ms, to_ms
from cml_jobs.stores import Run
from cml_jobs.stores.redis import connection_options, retry_options

__all__ = [
    "FUNCTION_NAME",
    "ArqSink",
    "SafeRedisSettings",
    "WorkerContext",
    "dumps",
    "loads",
    "redis_settings",
    "run_function",
]

logger = logging.getLogger("cml_jobs.worker")

FUNCTION_NAME = "cml_jobs.run"
# A run handed on by a worker that lacks its job class waits this long before another
# worker picks it up, so that a cluster of old workers does not spin on it.
_HANDOFF_DELAY = timedelta(seconds=1)
# arq's own timeout must never cut a run short: runs have their own per-task timeout.
ARQ_JOB_TIMEOUT = timedelta(days=1)


class WorkerContext(TypedDict, total=False):
    """The part of arq's ``ctx`` that cml-jobs uses."""

    cml_jobs: Runtime
    cml_jobs_exit: AsyncExitStack  # stops the heartbeat thread and the event publisher
    redis: ArqRedis
    job_id: str


class _Payload(TypedDict):
    t: str  # task id
    f: int  # fence
    o: int  # occurrence, epoch ms
    a: int  # attempt
    j: str | None  # job name, when the dispatcher knew it
    c: str | None  # W3C traceparent of the span that scheduled the task


def dumps(value: Any) -> bytes:
    """arq's job serializer: JSON, never pickle."""
    return json.dumps(value, separators=(",", ":"), default=str).encode()


def loads(raw: bytes) -> Any:
    """arq's job deserializer: JSON, never pickle."""
    return json.loads(raw)


def arq_job_id(run: Run) -> str:
    """The arq job id of a run: the same run always maps to the same id."""
    return f"cml:{run.task_id}:{to_ms(run.occurrence_at)}:{run.fence}"


class ArqSink:
    """Submits runs to the arq queue, for any worker to take.

    Args:
        pool: the arq Redis pool.
        queue_name: the arq queue.
        room: the most runs taken per dispatcher tick.
    """

    def __init__(self, pool: ArqRedis, queue_name: str, room: int = 500) -> None:
        self.pool = pool
        self.queue_name = queue_name
        self._room = room

    def room(self) -> int:
        """The queue takes a full batch every tick."""
        return self._room

    async def submit(self, runs: Sequence[Run], descriptors: Mapping[str, TaskDescriptor]) -> None:
        """Enqueue one arq job per run (a run already queued is not queued again)."""
        for run in runs:
            descriptor = descriptors.get(run.task_id)
            name = descriptor.name if descriptor is not None else None
            await self._enqueue(_payload(run, name), arq_job_id(run))

    async def _enqueue(
        self, payload: _Payload, job_id: str, defer: timedelta | None = None
    ) -> None:
        await self.pool.enqueue_job(
            FUNCTION_NAME,
            payload,
            _job_id=job_id,
            _queue_name=self.queue_name,
            _defer_by=defer,
        )


def _payload(run: Run, job_name: str | None) -> _Payload:
    return {
        "t": run.task_id,
        "f": run.fence,
        "o": to_ms(run.occurrence_at),
        "a": run.attempt,
        "j": job_name,
        "c": run.trace_context,
    }


async def _run(ctx: WorkerContext, payload: _Payload) -> None:
    """The arq function: execute one run in this worker's runtime."""
    runtime = ctx["cml_jobs"]
    assert runtime.executor is not None
    run = Run(payload["t"], payload["f"], from_ms(payload["o"]), payload["a"], payload.get("c"))
    if await runtime.executor.execute(run, payload.get("j")) is Handoff.ELSEWHERE:
        sink = ArqSink(ctx["redis"], runtime.settings.queue_name)
        await sink._enqueue(payload, f"{arq_job_id(run)}:{uuid4().hex[:8]}", _HANDOFF_DELAY)


run_function = func(
    _run,  # type: ignore[arg-type]
    name=FUNCTION_NAME,
    timeout=ARQ_JOB_TIMEOUT.total_seconds(),
    keep_result=0,
    max_tries=1,
)


class SafeRedisSettings(RedisSettings):
    """arq's ``RedisSettings`` whose repr never shows the password (arq's own repr does)."""

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{name}={'***' if name == 'password' and value else repr(value)}"
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
            that is not valid (the message never includes the URL).
    """
    parsed = RedisSettings.from_dsn(url)
    settings = SafeRedisSettings(**{f.name: getattr(parsed, f.name) for f in fields(parsed)})
    options = {**connection_options(url), **retry_options(patient=True)}
    for name, value in options.items():
        setattr(settings, name, value)
    settings.conn_retries = 1_000_000_000
    settings.conn_retry_delay = 1
    return settings


_original_log_redis_info = arq.worker.log_redis_info  # type: ignore[attr-defined]


async def _log_redis_info(redis: Any, log_func: Any) -> None:
    """arq logs INFO at start; fakeredis and least-privilege ACL users cannot run it."""
    try:
        await _original_log_redis_info(redis, log_func)
    except ResponseError as exc:
        logger.debug("Redis INFO not available (%s); not logged", exc)


arq.worker.log_redis_info = _log_redis_info  # type: ignore[attr-defined]
