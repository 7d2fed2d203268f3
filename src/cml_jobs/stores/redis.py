"""The Redis store: tasks and runs shared by every process that talks to one Redis.

Every mutating method is one Lua script (EVALSHA), so it is atomic across processes.

Beside the store, this module is the Redis side's public face for the rest of cml-jobs
(the worker imports nothing private from ``cml_jobs.stores``): ``redis_client`` and the
options it is built from, so every connection reads a URL the same way, and
``publish_events``, which writes a process's lifecycle events to the event stream
(read it with ``cml_jobs.events.EventStream``), and ``damaged_keys``, which finds what
in the store cannot be read (for ``cml-jobs check``).
"""

# Key layout (p = the prefix, "cml:" by default):
#
#   {p}task:{id}  HASH    descriptor   the descriptor, JSON text
#                         due_at       next occurrence (ms); absent when there is none
#                         paused       "1" when paused; absent otherwise
#                         parked       the reason; absent when not parked
#                         running      runs handed out and not finished (absent: 0)
#                         last_run_at (ms), last_outcome, last_error
#                         n:{outcome}  occurrences per Outcome value
#                         r:{fence}    "{occurrence ms}|{attempt}" a run under way (<0: given back)
#                         trace        W3C traceparent of the scheduling span; absent if none
#                         note         an operator's note; ended_at, expires (ms) once ended
#                         waiting      extra runs (r: fields "{occ}|0|x|{max}") not handed out
#   {p}history:{id} LIST  JSON run history rows, newest first, trimmed to history_size
#   {p}workers    HASH    worker id -> WorkerInfo JSON, refreshed by each heartbeat
#   {p}due        ZSET    task id -> ready time (ms); only tasks that can be claimed
#   {p}runs       ZSET    "{fence:016d}|{task id}" -> lease expiry (ms); the zero padding
#                         orders runs whose leases end together oldest first
#   {p}generation STRING  an id written once: when it is gone, Redis lost its data
#   {p}fence      STRING  a global INCR counter: fences are unique across tasks and
#                         replacements, so a replaced task's old fences never match again
#
# Times are integer epoch milliseconds (UTC). Task ids never contain "|". list() finds the
# tasks by SCAN. Task keys are built inside the scripts, so with Redis Cluster give the
# prefix a hash tag ("{cml}:").

from __future__ import annotations

import builtins
import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta
from typing import Any

import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.commands.core import AsyncScript

from cml_jobs.stores._base import (
    ClaimedRun,
    ClaimResult,
    Decision,
    DueBatch,
    Finish,
    NewTask,
    Run,
    TaskState,
)
from cml_jobs.stores._bulk import task_exists
from cml_jobs.stores._ops import DEFAULT_HISTORY_RETENTION, DEFAULT_HISTORY_SIZE
from cml_jobs.stores._redis_bulk import RedisBulk
from cml_jobs.stores._redis_checks import CHECKS
from cml_jobs.stores._redis_codec import (
    add_args,
    claim_result,
    decision_args,
    due_tasks,
    fence_pairs,
    finish_args,
    from_ms,
    glob_escape,
    ms,
    opt_ms,
    pairs,
    reissued,
    task_state,
    text,
)
from cml_jobs.stores._redis_connection import (
    access_denied,
    access_message,
    connection_options,
    redis_client,
    retry_options,
    tls_options,
    translated,
)
from cml_jobs.stores._redis_events import publish_events
from cml_jobs.stores._redis_inspect import damaged_keys
from cml_jobs.stores._redis_ops import OPS_LIB, RedisOperations
from cml_jobs.stores._redis_scripts import (
    ADD,
    CLAIM,
    EXTEND,
    FINISH,
    GET,
    LIB,
    POLL,
    RECLAIM,
    REMOVE,
)
from cml_jobs.stores._redis_sentinel import sentinel_client

__all__ = [
    "RedisScheduleStore",
    "access_denied",
    "access_message",
    "connection_options",
    "damaged_keys",
    "open_redis_store",
    "publish_events",
    "redis_client",
    "retry_options",
    "sentinel_client",
    "tls_options",
]


# An app's calls fail after this many retries with StoreUnavailableError, unlike a
# worker's, which wait for Redis for as long as it takes.
_APP_RETRIES = 3


class RedisScheduleStore(RedisOperations, RedisBulk):
    """A ``ScheduleStore``, ``OperationsStore`` and ``BulkScheduleStore`` on Redis, shared by
    every process that uses the same prefix.

    Args:
        redis: any ``redis.asyncio.Redis`` (arq's ``ArqRedis`` included), with or
            without ``decode_responses``. The store does not close it.
        prefix: prepended to every key, so several apps or tests can share one database.
        history_size: runs kept per task in its history.
        history_retention: how long a task that ended stays, with its history.
    """

    def __init__(
        self,
        redis: redis.asyncio.Redis,
        *,
        prefix: str = "cml:",
        history_size: int = DEFAULT_HISTORY_SIZE,
        history_retention: timedelta = DEFAULT_HISTORY_RETENTION,
    ) -> None:
        self._redis = redis
        self._task_prefix = f"{prefix}task:"
        self._history_prefix, self._workers_key = f"{prefix}history:", f"{prefix}workers"
        self._retention_ms = str(max(history_retention // timedelta(milliseconds=1), 1))
        self._history_size = str(max(history_size, 1))
        self._keys = [f"{prefix}due", f"{prefix}runs", f"{prefix}fence", f"{prefix}generation"]
        script = self._redis.register_script
        checked = LIB + CHECKS  # every writing script checks the shared keys first
        self._add = script(checked + ADD)
        self._remove = script(checked + REMOVE)
        self._poll = script(checked + POLL)
        self._get = script(GET)
        self._claim = script(checked + CLAIM)
        self._reclaim = script(checked + OPS_LIB + RECLAIM)
        self._extend = script(checked + EXTEND)
        self._finish = script(checked + OPS_LIB + FINISH)
        self._register_ops(checked)
        self._register_bulk(checked)
        # How a refused script is named to the operator ("EVALSHA (claim)").
        self._names = {id(s): n.strip("_") for n, s in vars(self).items() if n != "_redis"}

    @property
    def client(self) -> redis.asyncio.Redis:
        """The Redis client the store talks through."""
        return self._redis

    async def add(self, task: NewTask, *, replace: bool) -> bool:
        written = await self._call(self._add, *add_args(task, replace, self._history_prefix))
        if written == -1:
            raise task_exists(task.task_id)
        return bool(written)

    async def remove(self, task_id: str) -> int | None:
        started = int(await self._call(self._remove, task_id, self._history_prefix + task_id))
        return None if started < 0 else started

    async def get(self, task_id: str) -> TaskState | None:
        flat = await self._call(self._get, task_id)
        return task_state(task_id, pairs(flat)) if flat else None

    async def list(self) -> builtins.list[TaskState]:
        # SCAN rather than an index of ids: an index would cost two commands on every
        # one-time task's life, for an operation that is rare.
        pattern = glob_escape(self._task_prefix) + "*"
        with self._translated("SCAN and HGETALL (list)"):
            keys = [text(key) async for key in self._redis.scan_iter(pattern, count=1000)]
            async with self._redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.hgetall(key)
                # A key that is not a hash (written by something else) is not a task.
                found = await pipe.execute(raise_on_error=False)
        start = len(self._task_prefix)
        states = [
            task_state(key[start:], {text(k): text(v) for k, v in fields.items()})
            for key, fields in zip(keys, found, strict=True)
            if isinstance(fields, dict) and fields
        ]
        return sorted(states, key=lambda found: found.task_id)

    async def set_paused(
        self, task_id: str, *, paused: bool, due_at: datetime | None, ready_at: datetime | None
    ) -> bool:
        flag = "1" if paused else "0"
        done = await self._call(self._set_paused, task_id, flag, opt_ms(due_at), opt_ms(ready_at))
        return bool(done)

    async def poll(self, now: datetime, limit: int) -> DueBatch:
        flat, following, generation, unreadable = await self._call(
            self._poll, ms(now), str(max(limit, 0)), uuid.uuid4().hex
        )
        following_at = None if following is None else from_ms(following)
        dropped = tuple(text(task_id) for task_id in unreadable)
        return DueBatch(due_tasks(flat), following_at, text(generation), dropped)

    async def claim(
        self, decisions: Sequence[Decision], *, lease_until: datetime
    ) -> builtins.list[ClaimResult]:
        if not decisions:
            return []
        args = [arg for d in decisions for arg in decision_args(d)]
        flat = await self._call(self._claim, ms(lease_until), *args)
        return [claim_result(d, flat[2 * i], flat[2 * i + 1]) for i, d in enumerate(decisions)]

    async def reclaim_expired(
        self, *, now: datetime, lease_until: datetime, limit: int
    ) -> builtins.list[ClaimedRun]:
        if limit <= 0:
            return []
        flat = await self._call(self._reclaim, ms(now), ms(lease_until), str(limit))
        return reissued(flat)

    async def extend(
        self, runs: Sequence[Run], *, lease_until: datetime, release: bool = False
    ) -> builtins.list[bool]:
        if not runs:
            return []
        args = (ms(lease_until), "1" if release else "0", *fence_pairs(runs))
        return [bool(ok) for ok in await self._call(self._extend, *args)]

    async def finish(self, finishes: Sequence[Finish]) -> builtins.list[bool]:
        if not finishes:
            return []
        args = [arg for finish in finishes for arg in finish_args(finish)]
        done = await self._call(self._finish, *self._history_args(), *args)
        return [bool(ok) for ok in done]

    def _history_args(self) -> builtins.list[str]:
        """The arguments FINISH and RECORD start with: where and how much history goes."""
        return [self._history_prefix, self._history_size, self._retention_ms]

    async def _call(self, script: AsyncScript, *args: str) -> Any:
        with self._translated(f"EVALSHA ({self._names.get(id(script), 'a script')})"):
            return await script(keys=self._keys, args=[self._task_prefix, *args])

    def _translated(self, command: str = "a command") -> contextlib.AbstractContextManager[None]:
        return translated(self._redis, command)


@contextlib.asynccontextmanager
async def open_redis_store(
    url: str, *, prefix: str = "cml:", patient: bool = False, **history: Any
) -> AsyncIterator[RedisScheduleStore]:
    """A ``RedisScheduleStore`` on a client of its own for ``url``, closed at exit.

    Args:
        url: a ``redis://``, ``rediss://``, ``unix://`` or ``redis+sentinel://`` URL.
        prefix: the store's key prefix.
        patient: wait for Redis for as long as it takes (a worker's heartbeat); otherwise
            calls fail with ``StoreUnavailableError`` after a few retries (an app).
        **history: ``history_size`` and ``history_retention``, as the store takes them.

    Raises:
        StoreUnavailableError: Redis cannot be reached (not patient).
    """
    options = (
        {} if patient else {"retry": Retry(ExponentialBackoff(cap=1.0, base=0.05), _APP_RETRIES)}
    )
    client = redis_client(url, patient=True, **options)
    store = RedisScheduleStore(client, prefix=prefix, **history)
    try:
        with store._translated():
            await client.ping()
        yield store
    finally:
        await client.aclose()
