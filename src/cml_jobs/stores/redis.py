"""The Redis store: tasks and runs shared by every process that talks to one Redis.

Every mutating method is one Lua script (EVALSHA), so it is atomic across processes.
"""

# Key layout (p = the prefix, "cml:" by default):
#
#   {p}task:{id}  HASH    descriptor   the descriptor, JSON text
#                         due_at       next occurrence (ms); absent when there is none
#                         paused       "1" when paused; absent otherwise
#                         parked       the reason; absent when not parked
#                         running      runs handed out and not finished
#                         last_run_at, created_at (ms), last_outcome, last_error
#                         n:{outcome}  occurrences per Outcome value
#                         r:{fence}    "{occurrence ms}|{attempt}", one field per live run
#                         trace        W3C traceparent of the scheduling span; absent if none
#   {p}tasks      SET     every task id (for list)
#   {p}due        ZSET    task id -> ready time (ms); only tasks that can be claimed
#   {p}runs       ZSET    "{fence:016d}|{task id}" -> lease expiry (ms); the zero padding
#                         orders runs whose leases end together oldest first
#   {p}fence      STRING  a global INCR counter: fences are unique across tasks and
#                         replacements, so a replaced task's old fences never match again
#
# Times are integer epoch milliseconds (UTC). Task ids never contain "|". Task keys are
# built inside the scripts, so with Redis Cluster give the prefix a hash tag ("{cml}:").

from __future__ import annotations

import builtins
import contextlib
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import redis.asyncio
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from cml_jobs.exceptions import StoreUnavailableError, TaskExistsError
from cml_jobs.stores._base import (
    ClaimResult,
    ClaimStatus,
    Decision,
    DueBatch,
    DueTask,
    Finish,
    NewTask,
    Outcome,
    Run,
    StartedRun,
    TaskState,
)

__all__ = ["RedisScheduleStore"]

# KEYS = tasks, due, runs, fence for every script; ARGV[1] = the task key prefix.
_LIB = """
local function run_member(fence, id)
  return string.format('%016d', tonumber(fence)) .. '|' .. id
end
local function drop_task(key, id)
  for _, f in ipairs(redis.call('HKEYS', key)) do
    if string.sub(f, 1, 2) == 'r:' then
      redis.call('ZREM', KEYS[3], run_member(string.sub(f, 3), id))
    end
  end
  redis.call('DEL', key)
  redis.call('SREM', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
end
local function schedule(key, id, due, ready, held)
  -- held: the task is paused or parked (nil: look it up)
  if due == '' then
    redis.call('HDEL', key, 'due_at')
    redis.call('ZREM', KEYS[2], id)
    return
  end
  redis.call('HSET', key, 'due_at', due)
  if ready == '' then ready = due end
  if held == nil then
    local st = redis.call('HMGET', key, 'paused', 'parked')
    held = st[1] or st[2]
  end
  if held then redis.call('ZREM', KEYS[2], id)
  else redis.call('ZADD', KEYS[2], ready, id) end
end
local function new_run(key, id, occurrence, attempt, lease)
  local fence = redis.call('INCR', KEYS[4])
  redis.call('HSET', key, 'r:' .. fence, occurrence .. '|' .. attempt)
  redis.call('ZADD', KEYS[3], lease, run_member(fence, id))
  return fence
end
local function release(key, id, fence)
  local had = redis.call('HDEL', key, 'r:' .. fence)
  if had == 1 then redis.call('ZREM', KEYS[3], run_member(fence, id)) end
  return had
end
"""

# ARGV: prefix, id, descriptor, due, ready, created, replace, trace ("" for none)
# -> 1 written, 0 same, -1 conflict
_ADD = """
local id = ARGV[2]
local key = ARGV[1] .. id
if redis.call('EXISTS', key) == 1 then
  if redis.call('HGET', key, 'descriptor') == ARGV[3] then return 0 end
  if ARGV[7] ~= '1' then return -1 end
  drop_task(key, id)
end
redis.call('HSET', key, 'descriptor', ARGV[3], 'due_at', ARGV[4], 'created_at', ARGV[6],
  'running', 0)
if ARGV[8] ~= '' then redis.call('HSET', key, 'trace', ARGV[8]) end
redis.call('SADD', KEYS[1], id)
redis.call('ZADD', KEYS[2], ARGV[5], id)
return 1
"""

# ARGV: prefix, id
_REMOVE = """
local key = ARGV[1] .. ARGV[2]
if redis.call('EXISTS', key) == 0 then return 0 end
drop_task(key, ARGV[2])
return 1
"""

# ARGV: prefix, id, paused ("1"/"0"), due, ready ("" for none)
_SET_PAUSED = """
local key = ARGV[1] .. ARGV[2]
if redis.call('EXISTS', key) == 0 then return 0 end
if ARGV[3] == '1' then
  redis.call('HSET', key, 'paused', '1')
  redis.call('ZREM', KEYS[2], ARGV[2])
else
  redis.call('HDEL', key, 'paused')
  schedule(key, ARGV[2], ARGV[4], ARGV[5])
end
return 1
"""

# ARGV: prefix, id, reason
_PARK = """
local key = ARGV[1] .. ARGV[2]
if redis.call('EXISTS', key) == 0 then return 0 end
redis.call('HSET', key, 'parked', ARGV[3], 'last_outcome', 'parked', 'running', 0)
redis.call('HINCRBY', key, 'n:parked', 1)
redis.call('ZREM', KEYS[2], ARGV[2])
for _, f in ipairs(redis.call('HKEYS', key)) do
  if string.sub(f, 1, 2) == 'r:' then release(key, ARGV[2], string.sub(f, 3)) end
end
return 1
"""


# ARGV: prefix, now, limit -> {flat (id, due_at, descriptor, trace) quadruples,
#   the ready score of the first task not returned, or false}
_POLL = """
local out = {}
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[2], 'LIMIT', 0, ARGV[3])
for _, id in ipairs(ids) do
  local v = redis.call('HMGET', ARGV[1] .. id, 'due_at', 'descriptor', 'trace')
  if v[1] and v[2] then
    out[#out + 1] = id; out[#out + 1] = v[1]; out[#out + 1] = v[2]; out[#out + 1] = v[3] or ''
  end
end
local following = redis.call('ZRANGE', KEYS[2], #ids, #ids, 'WITHSCORES')
return {out, following[2] or false}
"""

# ARGV: prefix, id -> HGETALL
_GET = "return redis.call('HGETALL', ARGV[1] .. ARGV[2])"

# ARGV: prefix -> flat (id, HGETALL) pairs
_LIST = """
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local fields = redis.call('HGETALL', ARGV[1] .. id)
  if #fields > 0 then out[#out + 1] = id; out[#out + 1] = fields end
end
return out
"""

# ARGV: prefix, lease, then per decision: id, expected, run_at, next_due, next_ready,
# max_instances, missed ("" for none) -> flat (status, fence) pairs
_CLAIM = """
local function claim(id, expected, run_at, next_due, next_ready, max_instances, missed)
  local key = ARGV[1] .. id
  local st = redis.call('HMGET', key, 'descriptor', 'paused', 'parked', 'due_at', 'running')
  if not st[1] or st[2] or st[3] then return 'gone', 0 end
  if st[4] ~= expected then return 'raced', 0 end
  local status, fence = 'advanced', 0
  if run_at ~= '' and (tonumber(st[5]) or 0) < tonumber(max_instances) then
    status = 'claimed'
    fence = new_run(key, id, run_at, 1, ARGV[2])
    redis.call('HINCRBY', key, 'running', 1)
  elseif run_at ~= '' then
    status = 'skipped'
    redis.call('HSET', key, 'last_outcome', 'skipped')
    redis.call('HINCRBY', key, 'n:skipped', 1)
  end
  if tonumber(missed) > 0 then
    redis.call('HINCRBY', key, 'n:missed', missed)
    if status == 'advanced' then redis.call('HSET', key, 'last_outcome', 'missed') end
  end
  schedule(key, id, next_due, next_ready, false)
  if next_due == '' and status ~= 'claimed' and (tonumber(st[5]) or 0) == 0 then
    drop_task(key, id)  -- a one-time task whose occurrence was missed has ended
  end
  return status, fence
end
local out = {}
for i = 3, #ARGV, 7 do
  local status, fence = claim(unpack(ARGV, i, i + 6))
  out[#out + 1] = status; out[#out + 1] = fence
end
return out
"""

# ARGV: prefix, now, lease, limit -> flat (id, fence, occurrence, attempt) quadruples
_RECLAIM = """
local out = {}
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[2], 'LIMIT', 0, ARGV[4])) do
  local bar = string.find(m, '|', 1, true)
  local old, id = tonumber(string.sub(m, 1, bar - 1)), string.sub(m, bar + 1)
  local key = ARGV[1] .. id
  local run = redis.call('HGET', key, 'r:' .. old)
  release(key, id, old)
  redis.call('ZREM', KEYS[3], m)  -- also when the run's task is gone
  if run then
    bar = string.find(run, '|', 1, true)
    local occurrence = string.sub(run, 1, bar - 1)
    local attempt = tonumber(string.sub(run, bar + 1)) + 1
    local fence = new_run(key, id, occurrence, attempt, ARGV[3])
    out[#out + 1] = id; out[#out + 1] = fence
    out[#out + 1] = occurrence; out[#out + 1] = attempt
  end
end
return out
"""

# ARGV: prefix, id, fence, now, lease -> {descriptor, "occurrence|attempt"} or nil
_START = """
local key = ARGV[1] .. ARGV[2]
local run = redis.call('HGET', key, 'r:' .. ARGV[3])
if not run then return false end
redis.call('ZADD', KEYS[3], ARGV[5], run_member(ARGV[3], ARGV[2]))
redis.call('HSET', key, 'last_run_at', ARGV[4])
return {redis.call('HGET', key, 'descriptor'), run}
"""

# ARGV: prefix, lease, then pairs of id, fence -> one 1/0 per pair
_EXTEND = """
local out = {}
for i = 3, #ARGV, 2 do
  local id, fence = ARGV[i], ARGV[i + 1]
  if redis.call('HEXISTS', ARGV[1] .. id, 'r:' .. fence) == 1 then
    redis.call('ZADD', KEYS[3], ARGV[2], run_member(fence, id))
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
"""

# ARGV: prefix, then per finish: id, fence, outcome, error, has_error ("0" for none),
# end_task, started_at ("" for none) -> one 1/0 per finish
_FINISH = """
local function finish(id, fence, outcome, err, has_error, end_task, started_at)
  local key = ARGV[1] .. id
  if release(key, id, fence) == 0 then return 0 end
  local running = redis.call('HINCRBY', key, 'running', -1)
  local st = redis.call('HMGET', key, 'due_at', 'parked')
  if end_task == '1' or (running <= 0 and not st[1] and not st[2]) then
    drop_task(key, id)  -- ended: nothing left to record on it
    return 1
  end
  if has_error ~= '1' then err = '' end  -- '' reads as no error
  if started_at ~= '' then
    redis.call('HSET', key, 'last_outcome', outcome, 'last_error', err, 'last_run_at', started_at)
  else
    redis.call('HSET', key, 'last_outcome', outcome, 'last_error', err)
  end
  redis.call('HINCRBY', key, 'n:' .. outcome, 1)
  return 1
end
local out = {}
for i = 2, #ARGV, 7 do
  out[#out + 1] = finish(unpack(ARGV, i, i + 6))
end
return out
"""

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ONE_MS = timedelta(milliseconds=1)


def _ms(at: datetime) -> str:
    """Epoch milliseconds, truncated, as the decimal text Redis and the scripts compare."""
    if at.utcoffset() is None:
        raise ValueError(f"{at!r} is naive; cml-jobs stores only timezone-aware datetimes")
    return str((at - _EPOCH) // _ONE_MS)


def _opt_ms(at: datetime | None) -> str:
    return "" if at is None else _ms(at)


def _at(ms: object) -> datetime:
    return _EPOCH + timedelta(milliseconds=int(_text(ms)))


def _text(value: object) -> str:
    # The client may or may not decode responses (ArqRedis does not); accept both. Bytes
    # that are not UTF-8 (a tampered descriptor) must not break due() or list() for every
    # task: they decode with U+FFFD, so the descriptor fails validation and is parked.
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _pairs(flat: Sequence[Any]) -> dict[str, str]:
    return {_text(flat[i]): _text(flat[i + 1]) for i in range(0, len(flat), 2)}


def _outcome(value: str | None) -> Outcome | None:
    # A tampered value reads as unknown rather than breaking list() for every task.
    try:
        return None if value is None else Outcome(value)
    except ValueError:
        return None


def _state(task_id: str, fields: Mapping[str, str]) -> TaskState:
    def at(name: str) -> datetime | None:
        return _at(fields[name]) if name in fields else None

    return TaskState(
        task_id=task_id,
        descriptor_json=fields.get("descriptor", ""),
        due_at=at("due_at"),
        paused=fields.get("paused") == "1",
        parked_reason=fields.get("parked"),
        running=int(fields.get("running", "0")),
        last_run_at=at("last_run_at"),
        last_outcome=_outcome(fields.get("last_outcome")),
        last_error=fields.get("last_error") or None,
        created_at=at("created_at"),
        counts={k[2:]: int(v) for k, v in fields.items() if k.startswith("n:") and int(v)},
        trace_context=fields.get("trace"),
    )


def _run(task_id: str, fence: object, value: object) -> Run:
    occurrence, attempt = _text(value).split("|")
    return Run(task_id, int(_text(fence)), _at(occurrence), int(attempt))


def _decision_args(d: Decision) -> list[str]:
    return [
        d.task_id,
        _ms(d.expected_due_at),
        _opt_ms(d.run_at),
        _opt_ms(d.next_due_at),
        _opt_ms(d.next_ready_at),
        str(d.max_instances),
        str(d.missed),
    ]


def _finish_args(finish: Finish) -> list[str]:
    error_args = ["", "0"] if finish.error is None else [finish.error, "1"]
    return [
        finish.run.task_id,
        str(finish.run.fence),
        Outcome(finish.outcome).value,
        *error_args,
        "1" if finish.end_task else "0",
        _opt_ms(finish.started_at),
    ]


def _due_tasks(flat: Sequence[Any]) -> list[DueTask]:
    return [
        DueTask(_text(flat[i]), _at(flat[i + 1]), _text(flat[i + 2]), _text(flat[i + 3]) or None)
        for i in range(0, len(flat), 4)
    ]


def _claim_result(d: Decision, status: object, fence: object) -> ClaimResult:
    claim_status = ClaimStatus(_text(status))
    if claim_status is not ClaimStatus.CLAIMED or d.run_at is None:
        return ClaimResult(d.task_id, claim_status)
    return ClaimResult(
        d.task_id, claim_status, Run(d.task_id, int(_text(fence)), _at(_ms(d.run_at)))
    )


class RedisScheduleStore:
    """A ``ScheduleStore`` on Redis, shared by every process that uses the same prefix.

    Args:
        redis: any ``redis.asyncio.Redis`` (arq's ``ArqRedis`` included), with or
            without ``decode_responses``. The store does not close it.
        prefix: prepended to every key, so several apps or tests can share one database.
    """

    def __init__(self, redis: redis.asyncio.Redis, *, prefix: str = "cml:") -> None:
        self._redis = redis
        self._task_prefix = f"{prefix}task:"
        self._keys = [f"{prefix}tasks", f"{prefix}due", f"{prefix}runs", f"{prefix}fence"]
        script = self._redis.register_script
        self._add = script(_LIB + _ADD)
        self._remove = script(_LIB + _REMOVE)
        self._set_paused = script(_LIB + _SET_PAUSED)
        self._park = script(_LIB + _PARK)
        self._poll = script(_POLL)
        self._get = script(_GET)
        self._list = script(_LIST)
        self._claim = script(_LIB + _CLAIM)
        self._reclaim = script(_LIB + _RECLAIM)
        self._start = script(_LIB + _START)
        self._extend = script(_LIB + _EXTEND)
        self._finish = script(_LIB + _FINISH)

    async def add(self, task: NewTask, *, replace: bool) -> bool:
        if "|" in task.task_id:
            raise ValueError(f"task id {task.task_id!r} contains '|', which the store reserves")
        times = (_ms(task.due_at), _ms(task.ready_at), _ms(task.created_at))
        replacing = "1" if replace else "0"
        trace = task.trace_context or ""
        written = await self._call(
            self._add, task.task_id, task.descriptor_json, *times, replacing, trace
        )
        if written == -1:
            raise TaskExistsError(
                f"a different task with id {task.task_id!r} is already scheduled; "
                "pass replace=True to replace it, or cancel it first"
            )
        return bool(written)

    async def remove(self, task_id: str) -> bool:
        return bool(await self._call(self._remove, task_id))

    async def get(self, task_id: str) -> TaskState | None:
        flat = await self._call(self._get, task_id)
        return _state(task_id, _pairs(flat)) if flat else None

    async def list(self) -> builtins.list[TaskState]:
        flat = await self._call(self._list)
        states = [_state(_text(flat[i]), _pairs(flat[i + 1])) for i in range(0, len(flat), 2)]
        return sorted(states, key=lambda state: state.task_id)

    async def set_paused(
        self, task_id: str, *, paused: bool, due_at: datetime | None, ready_at: datetime | None
    ) -> bool:
        flag = "1" if paused else "0"
        done = await self._call(self._set_paused, task_id, flag, _opt_ms(due_at), _opt_ms(ready_at))
        return bool(done)

    async def park(self, task_id: str, reason: str) -> bool:
        return bool(await self._call(self._park, task_id, reason))

    async def due(self, now: datetime, limit: int) -> builtins.list[DueTask]:
        return [] if limit <= 0 else (await self.poll(now, limit)).tasks

    async def poll(self, now: datetime, limit: int) -> DueBatch:
        if limit <= 0:
            return DueBatch([], await self.next_ready_at())
        flat, following = await self._call(self._poll, _ms(now), str(limit))
        return DueBatch(_due_tasks(flat), None if following is None else _at(following))

    async def next_ready_at(self) -> datetime | None:
        _, due, runs, _ = self._keys
        with self._translated():
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.zrange(due, 0, 0, withscores=True)
                pipe.zrange(runs, 0, 0, withscores=True)
                firsts = await pipe.execute()
        scores = [int(first[0][1]) for first in firsts if first]
        return _at(min(scores)) if scores else None

    async def claim(
        self, decisions: Sequence[Decision], *, now: datetime, lease_until: datetime
    ) -> builtins.list[ClaimResult]:
        if not decisions:
            return []
        args = [arg for d in decisions for arg in _decision_args(d)]
        flat = await self._call(self._claim, _ms(lease_until), *args)
        return [_claim_result(d, flat[2 * i], flat[2 * i + 1]) for i, d in enumerate(decisions)]

    async def reclaim_expired(
        self, *, now: datetime, lease_until: datetime, limit: int
    ) -> builtins.list[Run]:
        if limit <= 0:
            return []
        flat = await self._call(self._reclaim, _ms(now), _ms(lease_until), str(limit))
        return [
            Run(_text(flat[i]), int(flat[i + 1]), _at(flat[i + 2]), int(flat[i + 3]))
            for i in range(0, len(flat), 4)
        ]

    async def start(self, run: Run, *, now: datetime, lease_until: datetime) -> StartedRun | None:
        found = await self._call(
            self._start, run.task_id, str(run.fence), _ms(now), _ms(lease_until)
        )
        if found is None:
            return None
        descriptor, value = found
        return StartedRun(_run(run.task_id, run.fence, value), _text(descriptor))

    async def extend(self, runs: Sequence[Run], *, lease_until: datetime) -> builtins.list[bool]:
        if not runs:
            return []
        pairs = [arg for run in runs for arg in (run.task_id, str(run.fence))]
        return [bool(ok) for ok in await self._call(self._extend, _ms(lease_until), *pairs)]

    async def finish(
        self,
        run: Run,
        outcome: Outcome,
        *,
        now: datetime,
        error: str | None = None,
        end_task: bool = False,
        started_at: datetime | None = None,
    ) -> bool:
        [done] = await self.finish_many([Finish(run, outcome, error, end_task, started_at)])
        return done

    async def finish_many(self, finishes: Sequence[Finish]) -> builtins.list[bool]:
        if not finishes:
            return []
        args = [arg for finish in finishes for arg in _finish_args(finish)]
        return [bool(done) for done in await self._call(self._finish, *args)]

    async def _call(self, script: AsyncScript, *args: str) -> Any:
        with self._translated():
            return await script(keys=self._keys, args=[self._task_prefix, *args])

    @contextlib.contextmanager
    def _translated(self) -> Iterator[None]:
        try:
            yield
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise StoreUnavailableError(
                f"the schedule store cannot reach Redis at {self._where()} ({exc}); check that "
                "Redis is running and that redis_url (CML_JOBS_REDIS_URL for workers) "
                "points to it"
            ) from exc

    def _where(self) -> str:
        kwargs = self._redis.connection_pool.connection_kwargs
        if "path" in kwargs:
            return repr(kwargs["path"])
        return repr(f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}")
