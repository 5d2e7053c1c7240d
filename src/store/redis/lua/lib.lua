-- lib.lua: helpers shared by every script; scripts.rs puts this file in
-- front of each script, so these locals are in scope there.
--
-- Every script receives the keys of ONE queue, always all ten, in this order
-- (built by keys.rs):
--   KEYS[1] tasks      HASH  task id -> MessagePack record (see record.rs)
--   KEYS[2] ready      ZSET  READY tasks by (9 - priority) * 2^44 + ready_seq
--   KEYS[3] leased     ZSET  LEASED tasks by lease deadline (ms)
--   KEYS[4] scheduled  ZSET  SCHEDULED tasks by due time (ms)
--   KEYS[5] finished   ZSET  SUCCEEDED/DEAD/CANCELED tasks by purge time (ms)
--   KEYS[6] seq        counter: ready_seq of the next task to become READY
--   KEYS[7] lease      counter: the next lease id (a fencing token, never reused)
--   KEYS[8] dedup      HASH  dedup_key -> task id
--   KEYS[9] requests   HASH  request_id -> task id
--   KEYS[10] watched   HASH  task id -> number of WatchTask calls on it
-- and two common arguments:
--   ARGV[1] now in ms since the Unix epoch, or '' to use Redis's clock (TIME)
--   ARGV[2] the pub/sub channel for events ("ready <queue>",
--           "lost <task id> <lease id> <1 if canceled, else 0>",
--           "changed <task id>" for a watched task)
-- Each script's own arguments start at ARGV[3].
--
-- A task is in exactly one of ready/leased/scheduled/finished: the one of its
-- state. Scripts check everything they need before their first write, so a
-- refused call leaves nothing half done.
--
-- Out of memory (maxmemory, noeviction): Redis refuses a script's first write
-- if that command may grow memory (HSET, ZADD, INCR, ...) and then lets the
-- rest of the script run. So enqueue fails whole (Full) while every script
-- that changes an existing task starts by taking it out of its index (ZREM)
-- and runs anyway: workers can still lease, extend and settle, draining a
-- full Redis instead of stalling on it.

local K_TASKS, K_READY, K_LEASED, K_SCHEDULED, K_FINISHED = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local K_SEQ, K_LEASE, K_DEDUP, K_REQUESTS, K_WATCHED = KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10]
local CHANNEL = ARGV[2]

-- Exact decimal digits: Lua 5.1 turns numbers into strings with %.14g, which
-- would round ready scores (up to 2^48) and future timestamps.
local function fmt(n)
  return string.format('%.0f', n)
end

local function clock()
  if ARGV[1] == '' then
    local t = redis.call('TIME')
    return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  return tonumber(ARGV[1])
end

local function load(id)
  local raw = redis.call('HGET', K_TASKS, id)
  if not raw then
    return nil
  end
  return cmsgpack.unpack(raw)
end

-- Stores the record and returns its encoding.
local function save(t)
  local raw = cmsgpack.pack(t)
  redis.call('HSET', K_TASKS, t.id, raw)
  return raw
end

local function is_final(state)
  return state == 'SUCCEEDED' or state == 'DEAD' or state == 'CANCELED'
end

-- core::lease::check: nil when lease_id is the live lease at `now`, else the
-- reason ('canceled' or 'mismatch').
local function lease_error(t, lease_id, now)
  if t.lease_id == 0 or t.lease_id ~= lease_id then
    return 'mismatch'
  end
  if t.state == 'CANCELED' then
    return 'canceled'
  end
  if t.state == 'LEASED' and t.lease_expire > now then
    return nil
  end
  return 'mismatch'
end

-- The task `id` when `lease_id` is its live lease at `now`; else nil and the
-- reason ('not_found', 'mismatch' or 'canceled').
local function load_held(id, lease_id, now)
  local t = load(id)
  if not t then
    return nil, 'not_found'
  end
  local err = lease_error(t, lease_id, now)
  if err then
    return nil, err
  end
  return t
end

local function clear_lease(t)
  t.lease_id = 0
  t.lease_expire = 0
  t.lease_worker = ''
end

-- Takes the task out of the index of its current state.
local function unindex(t)
  if t.state == 'READY' then
    redis.call('ZREM', K_READY, t.id)
  elseif t.state == 'LEASED' then
    redis.call('ZREM', K_LEASED, t.id)
  elseif t.state == 'SCHEDULED' then
    redis.call('ZREM', K_SCHEDULED, t.id)
  else
    redis.call('ZREM', K_FINISHED, t.id)
  end
end

-- READY at the back of its priority level.
local function make_ready(t)
  t.state = 'READY'
  t.ready_seq = redis.call('INCR', K_SEQ)
  local score = (9 - math.min(t.priority, 9)) * 17592186044416 + t.ready_seq
  redis.call('ZADD', K_READY, fmt(score), t.id)
end

local function make_scheduled(t, due)
  t.state = 'SCHEDULED'
  t.scheduled_time = due
  redis.call('ZADD', K_SCHEDULED, fmt(due), t.id)
end

-- A final state, kept until update_time + retention.
local function make_final(t, state, retention)
  t.state = state
  redis.call('ZADD', K_FINISHED, fmt(t.update_time + retention), t.id)
end

local function publish_ready(queue)
  redis.call('PUBLISH', CHANNEL, 'ready ' .. queue)
end

local function publish_lost(id, lease_id, canceled)
  redis.call('PUBLISH', CHANNEL, 'lost ' .. id .. ' ' .. fmt(lease_id) .. ' ' .. (canceled and '1' or '0'))
end

-- Whether any task of the queue is watched: one O(1) check per call, so the
-- per-task check (and its cost) only happens while someone watches.
local function any_watched()
  return redis.call('EXISTS', K_WATCHED) == 1
end

-- Tells the replicas that a watched task changed; `watching` is any_watched().
local function publish_changed(id, watching)
  if watching and redis.call('HEXISTS', K_WATCHED, id) == 1 then
    redis.call('PUBLISH', CHANNEL, 'changed ' .. id)
  end
end

-- Up to `limit` members of a time-ordered set due at `now`.
local function due(key, now, limit)
  return redis.call('ZRANGEBYSCORE', key, '-inf', fmt(now), 'LIMIT', 0, limit)
end

------------------------------------------------------------------------------
