"""The Lua scripts of the Redis store: each is one atomic step of the ScheduleStore contract.

The key layout they work on is described at the top of ``cml_jobs.stores.redis``. A script
that fails half-way keeps what it wrote before the error, so each one reads and checks
everything it needs before its first write (``CHECKS``, in ``_redis_checks.py``, comes
between ``LIB`` and each writing script), and never applies arithmetic to a stored value.
"""

from __future__ import annotations

# KEYS = due, runs, fence, generation for every script; ARGV[1] = the task key prefix.
LIB = """
local function run_member(fence, id)
  return string.format('%016d', tonumber(fence) or 0) .. '|' .. id  -- 0: never a fence
end
local function count(key, field, n)
  local now = tonumber(redis.call('HGET', key, field)) or 0
  redis.call('HSET', key, field, now + n)
  return now + n
end
local function drop_task(key, id, quick)
  -- quick: the caller knows the task has no run left and is not in the due index.
  -- Returns how many of its runs were under way (its r:{fence} fields).
  local under_way = 0
  if not quick then
    for _, f in ipairs(redis.call('HKEYS', key)) do
      if string.sub(f, 1, 2) == 'r:' then
        redis.call('ZREM', KEYS[2], run_member(string.sub(f, 3), id))
        under_way = under_way + 1
      end
    end
    redis.call('ZREM', KEYS[1], id)
  end
  redis.call('DEL', key)
  return under_way
end
local function schedule(key, id, due, ready, held)
  -- held: the task is paused or parked (nil: look it up)
  if due == '' then
    redis.call('HDEL', key, 'due_at')
    redis.call('ZREM', KEYS[1], id)
    return
  end
  redis.call('HSET', key, 'due_at', due)
  if ready == '' then ready = due end
  if held == nil then
    local st = redis.call('HMGET', key, 'paused', 'parked')
    held = st[1] or st[2]
  end
  if held then redis.call('ZREM', KEYS[1], id)
  else redis.call('ZADD', KEYS[1], ready, id) end
end
local function new_run(key, id, occurrence, attempt, lease)
  local fence = redis.call('INCR', KEYS[3])
  redis.call('HSET', key, 'r:' .. fence, occurrence .. '|' .. attempt)
  redis.call('ZADD', KEYS[2], lease, run_member(fence, id))
  return fence
end
local function release(key, id, fence)
  -- 1 if the run was live (its r: field is deleted), else 0
  if redis.call('HDEL', key, 'r:' .. fence) == 0 then return 0 end
  redis.call('ZREM', KEYS[2], run_member(fence, id))
  return 1
end
local function park(key, id, reason)
  redis.call('HSET', key, 'parked', reason, 'last_outcome', 'parked', 'running', 0, 'waiting', 0)
  count(key, 'n:parked', 1)
  redis.call('ZREM', KEYS[1], id)
  for _, f in ipairs(redis.call('HKEYS', key)) do
    if string.sub(f, 1, 2) == 'r:' then release(key, id, string.sub(f, 3)) end
  end
end
"""

# ARGV: prefix, id, descriptor, due, ready, replace, trace ("" for none), history key
# -> 1 written, 0 same, -1 conflict
ADD = """
local id = ARGV[2]
local key = ARGV[1] .. id
if redis.call('EXISTS', key) == 1 and not is_task(key) then
  redis.call('DEL', key)  -- not a task's hash (written by something else): not a task
elseif redis.call('HEXISTS', key, 'ended_at') == 1 then
  drop_task(key, id)  -- an ended task is only kept to be seen: a new one replaces it
elseif redis.call('EXISTS', key) == 1 then
  if redis.call('HGET', key, 'descriptor') == ARGV[3] then return 0 end
  if ARGV[6] ~= '1' then return -1 end
  drop_task(key, id)
end
if ARGV[7] ~= '' then
  redis.call('HSET', key, 'descriptor', ARGV[3], 'due_at', ARGV[4], 'trace', ARGV[7])
else
  redis.call('HSET', key, 'descriptor', ARGV[3], 'due_at', ARGV[4])
end
redis.call('ZADD', KEYS[1], ARGV[5], id)
redis.call('PERSIST', ARGV[8])  -- (ops) its history, kept for a task that had ended
return 1
"""

# ARGV: prefix, id, history key -> how many of its runs were under way, or -1 (no task)
REMOVE = """
local key = ARGV[1] .. ARGV[2]
if redis.call('EXISTS', key) == 0 then return -1 end
if not is_task(key) then
  redis.call('DEL', key)
  redis.call('ZREM', KEYS[1], ARGV[2])
  return -1
end
redis.call('DEL', ARGV[3])  -- (ops) its history
return drop_task(key, ARGV[2])
"""

# ARGV: prefix, now, limit, a new generation -> {flat (id, due_at, descriptor, trace)
#   quadruples, ready score of the first task not returned or false, generation, no-hash ids}
POLL = """
local unreadable = {}
local generation = redis.call('GET', KEYS[4])
if not generation then
  generation = ARGV[4]
  redis.call('SET', KEYS[4], generation)
end
local out = {}
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, ARGV[3])
for _, id in ipairs(ids) do
  local key = ARGV[1] .. id
  local v = fields_of(key, 'due_at', 'descriptor', 'trace')
  if v and v[2] and not whole(v[1]) then
    -- a due time that is not a number (tampered with) can never be planned
    park(key, id, 'stored due_at is not a time: ' .. tostring(v[1]))
  elseif v and v[1] and v[2] then
    out[#out + 1] = id; out[#out + 1] = v[1]; out[#out + 1] = v[2]; out[#out + 1] = v[3] or ''
  else
    -- not a task's hash (gone, or overwritten by something else): never due again
    redis.call('ZREM', KEYS[1], id)
    if not v then unreadable[#unreadable + 1] = id end
  end
end
-- what stays in the index before the first task not returned is what was returned
local following = redis.call('ZRANGE', KEYS[1], #out / 4, #out / 4, 'WITHSCORES')
return {out, following[2] or false, generation, unreadable}
"""

# ARGV: prefix, id -> HGETALL (empty when the key is not a task)
GET = """
local key = ARGV[1] .. ARGV[2]
if redis.call('TYPE', key).ok ~= 'hash' then return {} end
return redis.call('HGETALL', key)
"""

# ARGV: prefix, lease, then per decision: id, expected, run_at, next_due, next_ready,
# max_instances, missed, park ("" for none, else "!" and the reason) -> flat (status,
# fence) pairs
CLAIM = """
local function claim(id, expected, run_at, next_due, next_ready, max_instances, missed, reason)
  local key = ARGV[1] .. id
  local st = fields_of(key, 'descriptor', 'paused', 'parked', 'due_at', 'running', 'n:skipped',
    'n:missed')
  if not st or not st[1] or st[2] or st[3] then return 'gone', 0 end
  if st[4] ~= expected then return 'raced', 0 end
  if reason == '' then reason = damage(st, 5, 'running', 'n:skipped', 'n:missed') end
  if reason ~= '' then  -- "!" followed by the reason
    park(key, id, string.sub(reason, 2))
    return 'parked', string.sub(reason, 2)
  end
  local running = tonumber(st[5]) or 0
  local status, fence, changed = 'advanced', 0, {}
  if run_at ~= '' and running < tonumber(max_instances) then
    status = 'claimed'
    fence = redis.call('INCR', KEYS[3])
    running = running + 1
    changed = {'r:' .. fence, run_at .. '|1', 'running', running}
    redis.call('ZADD', KEYS[2], ARGV[2], run_member(fence, id))
  elseif run_at ~= '' then
    status = 'skipped'
    changed = {'last_outcome', 'skipped', 'n:skipped', (tonumber(st[6]) or 0) + 1}
  end
  if tonumber(missed) > 0 then
    changed[#changed + 1] = 'n:missed'
    changed[#changed + 1] = (tonumber(st[7]) or 0) + tonumber(missed)
    if status == 'advanced' then
      changed[#changed + 1] = 'last_outcome'; changed[#changed + 1] = 'missed'
    end
  end
  if next_due == '' then
    redis.call('ZREM', KEYS[1], id)
    if running == 0 then  -- a one-time task whose occurrence was missed has ended
      redis.call('DEL', key)
      return status, fence
    end
    redis.call('HDEL', key, 'due_at')
  else
    changed[#changed + 1] = 'due_at'; changed[#changed + 1] = next_due
    if next_ready == '' then next_ready = next_due end
    redis.call('ZADD', KEYS[1], next_ready, id)
  end
  if #changed > 0 then redis.call('HSET', key, unpack(changed)) end
  return status, fence
end
local out = {}
for i = 3, #ARGV, 8 do
  local status, fence = claim(unpack(ARGV, i, i + 7))
  out[#out + 1] = status; out[#out + 1] = fence
end
return out
"""

# ARGV: prefix, now, lease, limit
# -> flat (id, fence, occurrence, attempt, descriptor, trace, extra "1"/"0") septuples
RECLAIM = """
local out = {}
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[2], 'LIMIT', 0, ARGV[4])) do
  local bar = string.find(m, '|', 1, true)
  local old = bar and tonumber(string.sub(m, 1, bar - 1))
  local id = bar and string.sub(m, bar + 1)
  local key = id and ARGV[1] .. id
  local run = old and redis.pcall('HGET', key, 'r:' .. old)
  if type(run) ~= 'string' then run = nil end
  -- occurrence, attempt[, 'x' (extra)[, max_instances]]; checks: unreadable, its task parks
  local f = run and readable_run(key, id, old, run) and run_fields(run)
  local waits = f and f[2] == '0' and not its_turn(key, f[4])
  -- (ops) an extra run waiting its turn looks again in 1 s; any other run leaves the index
  -- (also when the run's task is gone, or m is malformed)
  if waits then redis.call('ZADD', KEYS[2], tonumber(ARGV[2]) + 1000, m)
  else redis.call('ZREM', KEYS[2], m) end
  if f and f[2] and not waits then
    release(key, id, old)
    local v, n = redis.call('HMGET', key, 'descriptor', 'trace', 'parked'), tonumber(f[2]) or 1
    local attempt, extra = n < 0 and -n or n + 1, f[3] == 'x'  -- n < 0: given back (EXTEND)
    if f[2] == '0' then count(key, 'waiting', -1) end
    if v[1] and not v[3] then
      local fence = new_run(key, id, f[1], extra and attempt .. '|x' or attempt, ARGV[3])
      out[#out + 1] = id; out[#out + 1] = fence; out[#out + 1] = f[1]; out[#out + 1] = attempt
      out[#out + 1] = v[1]; out[#out + 1] = v[2] or ''; out[#out + 1] = extra and '1' or '0'
    end
  end
end
return out
"""

# ARGV: prefix, lease, release ("1": store the attempt negative), then id, fence pairs -> 1/0 each
EXTEND = """
local out = {}
for i = 4, #ARGV, 2 do
  local key, field = ARGV[1] .. ARGV[i], 'r:' .. ARGV[i + 1]
  local live = redis.pcall('HEXISTS', key, field) == 1
  out[#out + 1] = live and 1 or 0
  if live then redis.call('ZADD', KEYS[2], ARGV[2], run_member(ARGV[i + 1], ARGV[i])) end
  local run = live and ARGV[3] == '1' and redis.call('HGET', key, field) or ''
  local occurrence, attempt, rest = string.match(run, '^([^|]*)|([1-9]%d*)(.*)$')
  if attempt then redis.call('HSET', key, field, occurrence .. '|-' .. attempt .. rest) end
end
return out
"""

# ARGV: prefix, history prefix, history size, retention ms, then per finish: id, fence,
# outcome, error, has_error ("0" for none), end_task, started_at ("" for none), history row
# ("" for none), ended_at ("" for none) -> one 1/0 per finish
FINISH = """
local function finish(id, fence, outcome, err, has_error, end_task, started_at, row, ended)
  local key = ARGV[1] .. id
  -- checks: damaged counts park the task; a history key of another type keeps no row
  outcome, err, has_error, row = checked_finish(key, id, outcome, err, has_error, end_task, row)
  local released = redis.pcall('HDEL', key, 'r:' .. fence)
  if released ~= 1 then return 0 end  -- a stale fence, or the key is not a task
  redis.call('ZREM', KEYS[2], run_member(fence, id))
  if has_error ~= '1' then err = '' end  -- '' reads as no error
  if row ~= '' then keep_row(id, row) end  -- (ops) the run's history row
  local changed = {}
  if started_at ~= '' then changed = {'last_run_at', started_at} end
  if outcome == 'parked' then
    if #changed > 0 then redis.call('HSET', key, unpack(changed)) end
    park(key, id, err ~= '' and err or 'parked')
    return 1
  end
  local st = redis.call('HMGET', key, 'due_at', 'parked', 'running', 'n:' .. outcome)
  local running = (tonumber(st[3]) or 1) - 1
  local ends = end_task == '1' or (running <= 0 and not st[1] and not st[2])
  if ends and (ended == '' or end_task == '1') then
    drop_task(key, id, end_task ~= '1')  -- ended: nothing left to record on it
    if row ~= '' then redis.call('PEXPIRE', ARGV[2] .. id, tonumber(ARGV[4])) end  -- (ops)
    return 1
  elseif ends then  -- (ops) a one-time task: kept, ended, for the retention
    keep_ended(key, id, ended)
    running = 0
  end
  for _, v in ipairs({'running', running, 'last_outcome', outcome, 'last_error', err,
      'n:' .. outcome, (tonumber(st[4]) or 0) + 1}) do
    changed[#changed + 1] = v
  end
  redis.call('HSET', key, unpack(changed))
  return 1
end
local out = {}
for i = 5, #ARGV, 9 do
  out[#out + 1] = finish(unpack(ARGV, i, i + 8))
end
return out
"""
