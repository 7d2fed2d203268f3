"""The checks every Redis store script makes before its first write.

A Lua script that fails half-way keeps what it wrote before the error (Redis does not
roll scripts back), and whatever Redis holds may have been written around cml-jobs. So
``CHECKS`` is prepended to every writing script, after ``LIB``. It defines the helpers the
scripts read tampered state with, and then runs one guard at the top level: when one of
the store's shared keys (``KEYS``: due, runs, fence, generation) holds the wrong type, or
the fence counter is not a whole number, the script stops with an error reply that says
so, before it has written anything. A single task's damaged state is handled by each
script (it parks the task); only damage to the shared keys stops a script.
"""

from __future__ import annotations

__all__ = ["CHECKS", "STORE_DAMAGED"]

#: How the guard's error reply starts; the store raises ``StoreError`` with its message.
STORE_DAMAGED = "cml-jobs store damaged:"

CHECKS = (
    """
local function is_task(key)
  return redis.call('TYPE', key).ok == 'hash'
end
local function fields_of(key, ...)
  -- HMGET, or nil when the key holds something other than a hash (not a task)
  local values = redis.pcall('HMGET', key, ...)
  if values.err then return nil end
  return values
end
local function holds(key, wanted)
  -- the key is absent or of the type wanted (a list, for a task's history)
  local found = redis.call('TYPE', key).ok
  return found == 'none' or found == wanted
end
local function whole(value)
  -- absent, or a whole number written as the store writes it (no 'inf', 'nan', '1e9')
  return not value or (#value < 19 and string.find(value, '^%-?%d+$') ~= nil)
end
local function damage(values, first, ...)
  -- '' when the named fields (values[first] for the first name, and so on) are whole
  -- numbers or absent, else '!' and the reason to park the task
  if not values then return '' end
  for i, name in ipairs({...}) do
    local value = values[first + i - 1]
    if not whole(value) then
      return '!stored field ' .. name .. ' is not a whole number: ' ..
        string.sub(tostring(value), 1, 40) .. ' (written around cml-jobs); ' ..
        'reschedule the task from the app'
    end
  end
  return ''
end
local function checked_finish(key, id, outcome, err, has_error, end_task, row)
  -- FINISH's checks: a count the finish adds to that is no whole number parks the task
  -- (unless the run ends or parks it anyway); a history key of another type keeps no row
  local bad = damage(fields_of(key, 'running', 'n:' .. outcome), 1, 'running', 'n:' .. outcome)
  if bad ~= '' and end_task ~= '1' and outcome ~= 'parked' then
    outcome, err, has_error = 'parked', bad:sub(2), '1'
  end
  if row ~= '' and not holds(ARGV[2] .. id, 'list') then row = '' end
  return outcome, err, has_error, row
end
local function readable_run(key, id, fence, run)
  -- RECLAIM's check: a run field must read "{occurrence ms}|{attempt}...", or its task is
  -- parked (false) rather than re-issued with a time that is no time
  local occurrence, attempt = string.match(run, '^([^|]*)|([^|]+)')
  if occurrence and attempt and occurrence ~= '' and whole(occurrence) then return true end
  park(key, id, 'stored run ' .. fence .. ' is not "{occurrence}|{attempt}": ' .. run:sub(1, 40))
  return false
end
local function store_damage()
  for i, wanted in ipairs({'zset', 'zset', 'string', 'string'}) do
    local found = redis.call('TYPE', KEYS[i]).ok
    if found ~= 'none' and found ~= wanted then
      return KEYS[i] .. ' holds a ' .. found .. ' where cml-jobs keeps a ' .. wanted
    end
  end
  local fence = redis.call('GET', KEYS[3])
  if not whole(fence) then
    return KEYS[3] .. ' holds ' .. string.sub(fence, 1, 40) .. ', not a whole number'
  end
end
do
  local damaged = store_damage()
  if damaged then
    return redis.error_reply('"""
    + STORE_DAMAGED
    + """ ' .. damaged .. '; it was written ' ..
      'around cml-jobs, and cml-jobs changes nothing until it is repaired (restore it ' ..
      'from a backup)')
  end
end
"""
)
