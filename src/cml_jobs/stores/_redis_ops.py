"""The Redis store's side of ``OperationsStore``: its Lua scripts and the mixin that calls
them (see the key layout at the top of ``redis.py``).

``OPS_LIB`` holds the helpers that ``FINISH`` and ``RECLAIM`` call for history rows,
ended tasks and extra runs; the operator's scripts (pause, unpark, update, note, extra
runs) follow the store's rule: read and check everything before the first write.
"""

from __future__ import annotations

import builtins
import contextlib
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import redis.asyncio
from redis.commands.core import AsyncScript

from cml_jobs.stores._ops import RunRecord, WorkerInfo
from cml_jobs.stores._redis_codec import ms, opt_ms, text

__all__ = [
    "ADD_RUNS",
    "OPS_LIB",
    "RECORD",
    "SET_NOTE",
    "SET_PAUSED",
    "UNPARK",
    "UPDATE",
    "RedisOperations",
]

# Appended to LIB for FINISH (whose ARGV[2] is the history key prefix, ARGV[3] the history
# size and ARGV[4] the retention in ms) and RECLAIM.
OPS_LIB = """
local function run_fields(run)
  -- a run field's value: occurrence, attempt[, 'x' for an extra run[, max_instances]]
  local f = {}
  for part in string.gmatch(run, '[^|]+') do f[#f + 1] = part end
  return f
end
local function its_turn(key, max_instances)
  -- an extra run waiting (attempt 0) is handed out once fewer than max_instances of the
  -- task's handed-out runs are going
  local st = redis.call('HMGET', key, 'running', 'waiting')
  local going = (tonumber(st[1]) or 0) - (tonumber(st[2]) or 0)
  return going < (tonumber(max_instances) or 1)
end
local function keep_row(id, row)
  local hkey = ARGV[2] .. id
  redis.call('LPUSH', hkey, row)
  redis.call('LTRIM', hkey, 0, tonumber(ARGV[3]) - 1)
end
local function keep_ended(key, id, ended)
  -- a one-time task's run finished (no run left, no due time): keep it, ended, for its
  -- outcome and history
  local retention = tonumber(ARGV[4])
  redis.call('HSET', key, 'ended_at', ended, 'expires', tonumber(ended) + retention, 'waiting', 0)
  redis.call('PEXPIRE', key, retention)
  redis.call('PEXPIRE', ARGV[2] .. id, retention)
end
"""

# ARGV: prefix, id, paused ("1"/"0"), due, ready ("" for none)
SET_PAUSED = """
local key = ARGV[1] .. ARGV[2]
if redis.call('EXISTS', key) == 0 or not is_task(key) then return 0 end
if redis.call('HEXISTS', key, 'ended_at') == 1 then return 0 end
if ARGV[3] == '1' then
  redis.call('HSET', key, 'paused', '1')
  redis.call('ZREM', KEYS[1], ARGV[2])
else
  redis.call('HDEL', key, 'paused')
  schedule(key, ARGV[2], ARGV[4], ARGV[5])
end
return 1
"""

# ARGV: prefix, id, now, max_instances, occurrences... -> 1 queued, 0 no live task
ADD_RUNS = """
local id = ARGV[2]
local key = ARGV[1] .. id
local st = fields_of(key, 'descriptor', 'parked', 'ended_at', 'running', 'waiting')
if not st or not st[1] or st[2] or st[3] then return 0 end
local n = #ARGV - 4
for i = 5, #ARGV do
  local fence = redis.call('INCR', KEYS[3])
  redis.call('HSET', key, 'r:' .. fence, ARGV[i] .. '|0|x|' .. ARGV[4])
  redis.call('ZADD', KEYS[2], ARGV[3], run_member(fence, id))
end
local running, waiting = (tonumber(st[4]) or 0) + n, (tonumber(st[5]) or 0) + n
redis.call('HSET', key, 'running', running, 'waiting', waiting)
return 1
"""

# ARGV: prefix, id, due, ready ("" for none) -> 1 unparked, 0 not a parked task
UNPARK = """
local key = ARGV[1] .. ARGV[2]
local st = fields_of(key, 'descriptor', 'parked')
if not st or not st[1] or not st[2] then return 0 end
redis.call('HDEL', key, 'parked')
schedule(key, ARGV[2], ARGV[3], ARGV[4])
return 1
"""

# ARGV: prefix, id, descriptor, due, ready -> 1 updated, 0 no live task
UPDATE = """
local key = ARGV[1] .. ARGV[2]
local st = fields_of(key, 'descriptor', 'ended_at')
if not st or not st[1] or st[2] then return 0 end
redis.call('HSET', key, 'descriptor', ARGV[3])
schedule(key, ARGV[2], ARGV[4], ARGV[5])
return 1
"""

# ARGV: prefix, id, note ("" removes it) -> 1 done, 0 no task
SET_NOTE = """
local key = ARGV[1] .. ARGV[2]
local st = fields_of(key, 'descriptor')
if not st or not st[1] then return 0 end
if ARGV[3] == '' then redis.call('HDEL', key, 'note')
else redis.call('HSET', key, 'note', ARGV[3]) end
return 1
"""

# ARGV: prefix, history prefix, history size, retention ms, then pairs of id, row.
# A row of a task that is gone (a one-time task missed at its claim) is kept for the
# retention, then expires with its history.
RECORD = """
for i = 5, #ARGV, 2 do
  local hkey = ARGV[2] .. ARGV[i]
  if holds(hkey, 'list') then  -- (checks) a history key of another type keeps no row
    redis.call('LPUSH', hkey, ARGV[i + 1])
    redis.call('LTRIM', hkey, 0, tonumber(ARGV[3]) - 1)
    if redis.call('EXISTS', ARGV[1] .. ARGV[i]) == 0 then
      redis.call('PEXPIRE', hkey, tonumber(ARGV[4]))
    end
  end
end
return 1
"""


class RedisOperations:
    """``OperationsStore`` on Redis (mixed into ``RedisScheduleStore``)."""

    _redis: redis.asyncio.Redis
    _history_prefix: str
    _workers_key: str

    if TYPE_CHECKING:  # the store's

        async def _call(self, script: AsyncScript, *args: str) -> Any: ...

        def _translated(self, command: str = ...) -> contextlib.AbstractContextManager[None]: ...

        def _history_args(self) -> list[str]: ...

    def _register_ops(self, lib: str) -> None:
        script = self._redis.register_script
        self._set_paused = script(lib + SET_PAUSED)
        self._add_runs = script(lib + ADD_RUNS)
        self._unpark = script(lib + UNPARK)
        self._update = script(lib + UPDATE)
        self._set_note = script(lib + SET_NOTE)
        self._record = script(lib + RECORD)

    async def history(self, task_id: str, limit: int) -> builtins.list[RunRecord]:
        with self._translated():
            raw = await _done(
                self._redis.lrange(self._history_prefix + task_id, 0, max(limit, 1) - 1)
            )
        return list(_readable(RunRecord.from_json, raw))

    async def record(self, rows: Sequence[RunRecord]) -> None:
        if rows:
            pairs = [arg for row in rows for arg in (row.task_id, row.to_json())]
            await self._call(self._record, *self._history_args(), *pairs)

    async def add_runs(
        self, task_id: str, occurrences: Sequence[datetime], *, max_instances: int, now: datetime
    ) -> bool:
        times = [ms(at) for at in occurrences]
        return bool(await self._call(self._add_runs, task_id, ms(now), str(max_instances), *times))

    async def unpark(
        self, task_id: str, *, due_at: datetime | None, ready_at: datetime | None
    ) -> bool:
        return bool(await self._call(self._unpark, task_id, opt_ms(due_at), opt_ms(ready_at)))

    async def update(
        self, task_id: str, descriptor_json: str, *, due_at: datetime, ready_at: datetime
    ) -> bool:
        times = (ms(due_at), ms(ready_at))
        return bool(await self._call(self._update, task_id, descriptor_json, *times))

    async def set_note(self, task_id: str, note: str | None) -> bool:
        return bool(await self._call(self._set_note, task_id, note or ""))

    async def beat(self, worker: WorkerInfo) -> None:
        with self._translated("HSET (the worker registry)"):
            await _done(self._redis.hset(self._workers_key, worker.id, worker.to_json()))

    async def leave(self, worker_id: str) -> None:
        with self._translated("HDEL (the worker registry)"):
            await _done(self._redis.hdel(self._workers_key, worker_id))

    async def workers(self, now: datetime) -> builtins.list[WorkerInfo]:
        with self._translated("HGETALL (the worker registry)"):
            found = await _done(self._redis.hgetall(self._workers_key))
        workers = {text(k): text(v) for k, v in found.items()}
        live = {w.id: w for w in _readable(WorkerInfo.from_json, workers.values())}
        gone = [key for key in workers if key not in live or live[key].expires_at <= now]
        if gone:  # crashed workers: their registration expired
            with self._translated():
                await _done(self._redis.hdel(self._workers_key, *gone))
        return [live[key] for key in sorted(live) if key not in gone]


async def _done(reply: Any) -> Any:
    """The reply of an async client's command (redis-py types it as maybe-awaitable)."""
    return await reply


def _readable(parse: Any, raw: Any) -> Iterator[Any]:
    """What ``parse`` reads from each value; a value that cannot be read (tampered with)
    is left out rather than breaking the read."""
    for value in raw:
        with contextlib.suppress(ValueError):
            yield parse(text(value))
