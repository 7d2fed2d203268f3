"""The Lua scripts of the Redis store: each is one atomic step of the ScheduleStore contract.

The key layout they work on is described at the top of ``cml_jobs.stores.redis``.
"""

from __future__ import annotations

# KEYS = due, runs, fence, generation for every script; ARGV[1] = the task key prefix.
LIB = """
local function run_member(fence, id)
  return string.format('%016d', tonumber(fence)) .. '|' .. id
end
local function drop_task(key, id, quick)
  -- quick: the caller knows the task has no run left and is not in the due index.
  -- Returns how many of its runs had started (the fields s:{fence} that confirm wrote).
  local started = 0
  if not quick then
    for _, f in ipairs(redis.call('HKEYS', key)) do
      local kind = string.sub(f, 1, 2)
      if kind == 'r:' then
        redis.call('ZREM', KEYS[2], run_member(string.sub(f, 3), id))
      elseif kind == 's:' then
        started = started + 1
      end
    end
    redis.call('ZREM', KEYS[1], id)
  end
  redis.call('DEL', key)
  return started
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
  -- 1 if the run was live (its r: field, and s: once confirmed, are deleted), else 0
  if redis.call('HDEL', key, 'r:' .. fence, 's:' .. fence) == 0 then return 0 end
  redis.call('ZREM', KEYS[2], run_member(fence, id))
  return 1
end
"""

# ARGV: prefix, id, descriptor, due, ready, replace, trace ("" for none)
# -> 1 written, 0 same, -1 conflict
ADD = """
local id = ARGV[2]
local key = ARGV[1] .. id
if redis.call('EXISTS', key) == 1 then
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
return 1
"""

# ARGV: prefix, id -> how many of its runs had started, or -1 when there is no task
REMOVE = """
local key = ARGV[1] .. ARGV[2]
if redis.call('EXISTS', key) == 0 then return -1 end
return drop_task(key, ARGV[2])
"""

# ARGV: prefix, id, paused ("1"/"0"), due, ready ("" for none)
SET_PAUSED = """
local key = ARGV[1] .. ARGV[2]
if redis.call('EXISTS', key) == 0 then return 0 end
if ARGV[3] == '1' then
  redis.call('HSET', key, 'paused', '1')
  redis.call('ZREM', KEYS[1], ARGV[2])
else
  redis.call('HDEL', key, 'paused')
  schedule(key, ARGV[2], ARGV[4], ARGV[5])
end
return 1
"""

# ARGV: prefix, id, reason
PARK = """
local key = ARGV[1] .. ARGV[2]
if redis.call('EXISTS', key) == 0 then return 0 end
redis.call('HSET', key, 'parked', ARGV[3], 'last_outcome', 'parked', 'running', 0)
redis.call('HINCRBY', key, 'n:parked', 1)
redis.call('ZREM', KEYS[1], ARGV[2])
for _, f in ipairs(redis.call('HKEYS', key)) do
  if string.sub(f, 1, 2) == 'r:' then release(key, ARGV[2], string.sub(f, 3)) end
end
return 1
"""


# ARGV: prefix, now, limit -> {flat (id, due_at, descriptor, trace) quadruples,
#   the ready score of the first task not returned, or false}
POLL = """
local out = {}
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, ARGV[3])
for _, id in ipairs(ids) do
  local key = ARGV[1] .. id
  local v = redis.call('HMGET', key, 'due_at', 'descriptor', 'trace')
  if v[2] and not tonumber(v[1]) then
    -- a due time that is not a number (tampered with) can never be planned: park it
    redis.call('HSET', key, 'parked', 'stored due_at is not a time: ' .. tostring(v[1]),
      'last_outcome', 'parked')
    redis.call('HINCRBY', key, 'n:parked', 1)
    redis.call('ZREM', KEYS[1], id)
  elseif v[1] and v[2] then
    out[#out + 1] = id; out[#out + 1] = v[1]; out[#out + 1] = v[2]; out[#out + 1] = v[3] or ''
  end
end
local following = redis.call('ZRANGE', KEYS[1], #ids, #ids, 'WITHSCORES')
return {out, following[2] or false}
"""

# ARGV: prefix, id -> HGETALL
GET = "return redis.call('HGETALL', ARGV[1] .. ARGV[2])"

# ARGV: prefix, lease, then per decision: id, expected, run_at, next_due, next_ready,
# max_instances, missed ("" for none) -> flat (status, fence) pairs
CLAIM = """
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
    drop_task(key, id, true)  -- a one-time task whose occurrence was missed has ended
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
RECLAIM = """
local out = {}
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[2], 'LIMIT', 0, ARGV[4])) do
  local bar = string.find(m, '|', 1, true)
  local old = bar and tonumber(string.sub(m, 1, bar - 1))
  local id = bar and string.sub(m, bar + 1)
  local run = old and redis.call('HGET', ARGV[1] .. id, 'r:' .. old)
  redis.call('ZREM', KEYS[2], m)  -- also when the run's task is gone, or m is malformed
  if run then
    local key = ARGV[1] .. id
    release(key, id, old)
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
START = """
local key = ARGV[1] .. ARGV[2]
local run = redis.call('HGET', key, 'r:' .. ARGV[3])
if not run then return false end
redis.call('ZADD', KEYS[2], ARGV[5], run_member(ARGV[3], ARGV[2]))
redis.call('HSET', key, 'last_run_at', ARGV[4])
return {redis.call('HGET', key, 'descriptor'), run}
"""

# ARGV: prefix, lease, then pairs of id, fence -> one 1/0 per pair
EXTEND = """
local out = {}
for i = 3, #ARGV, 2 do
  local id, fence = ARGV[i], ARGV[i + 1]
  if redis.call('HEXISTS', ARGV[1] .. id, 'r:' .. fence) == 1 then
    redis.call('ZADD', KEYS[2], ARGV[2], run_member(fence, id))
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
"""

# ARGV: prefix, then per finish: id, fence, outcome, error, has_error ("0" for none),
# end_task, started_at ("" for none) -> one 1/0 per finish
FINISH = """
local function finish(id, fence, outcome, err, has_error, end_task, started_at)
  local key = ARGV[1] .. id
  if release(key, id, fence) == 0 then return 0 end
  local running = redis.call('HINCRBY', key, 'running', -1)
  local st = redis.call('HMGET', key, 'due_at', 'parked')
  if end_task == '1' or (running <= 0 and not st[1] and not st[2]) then
    drop_task(key, id, end_task ~= '1')  -- ended: nothing left to record on it
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

# KEYS[4] = the generation key; ARGV: prefix, a new generation -> the stored generation
GENERATION = """
local current = redis.call('GET', KEYS[4])
if current then return current end
redis.call('SET', KEYS[4], ARGV[2])
return ARGV[2]
"""

# ARGV: prefix, then pairs of id, fence -> one 1/0 per pair; each valid run is marked
# started (s:{fence}), which REMOVE counts
CONFIRM = """
local out = {}
for i = 2, #ARGV, 2 do
  local key, fence = ARGV[1] .. ARGV[i], ARGV[i + 1]
  local valid = redis.call('HEXISTS', key, 'r:' .. fence)
  if valid == 1 then redis.call('HSET', key, 's:' .. fence, '1') end
  out[#out + 1] = valid
end
return out
"""
