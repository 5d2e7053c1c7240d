-- lib.lua: helpers shared by every script; scripts.rs puts this file in
-- front of each script, so these locals are in scope there.
--
-- Every script receives the keys of ONE queue, always all thirty-nine, in
-- this order (built by keys.rs):
--   KEYS[1] meta       HASH  task id -> the task's changing fields, packed (HEAD, TAIL)
--   KEYS[2] body       HASH  task id -> the task's fixed fields (written by
--                            record.rs, never read by Lua: kind, payload, ...)
--   KEYS[3] results    HASH  task id -> result bytes of a SUCCEEDED task
--   KEYS[4] leased     ZSET  LEASED tasks by lease deadline (ms)
--   KEYS[5] scheduled  ZSET  SCHEDULED tasks by due time (ms)
--   KEYS[6] finished   LIST  SUCCEEDED/DEAD/CANCELED tasks as '<purge time>:<id>',
--                            in the order they finished (so by purge time)
--   KEYS[7] seq        counter: ready_seq of the last task made READY; also
--                            the places in the turns (KEYS[30..39])
--   KEYS[8] lease      counter: the high part of the lease ids (lease.lua)
--   KEYS[9] dedup      HASH  dedup_key -> task id
--   KEYS[10] requests  HASH  request_id -> task id
--   KEYS[11] watched   HASH  task id -> number of WatchTask calls on it
--   KEYS[12] flow      HASH  flow control: the rate limit's token bucket
--                            (`tokens`, `at`: core::flow::Bucket); `keyed`
--                            once a task with a concurrency key was enqueued
--                            (from then on the groups take turns, KEYS[30..39]);
--                            then `t:<id>` -> the task's concurrency key and
--                            `k:<key>` -> LEASED tasks with that key; `sems`
--                            once a task needing semaphores was enqueued, then
--                            `s:<id>` -> its semaphore names, comma-separated
--   KEYS[13..22] ready LIST  READY tasks of priority 0..9 without a concurrency
--                            key (the no-key group), oldest first; also any
--                            task an older build put there, keyed or not
--                            (delivered as part of the no-key group). A
--                            keyed task waits in its group's list instead,
--                            `<ready list of its priority>:k:<key>` (same
--                            slot: k_group), FIFO too
-- and what the operations API keeps (admin.rs):
--   KEYS[23] paused    STRING present while the queue is paused (lease.lua
--                            then takes nothing)
--   KEYS[24] totals    HASH  enqueued, delivered, acked, nacked, dead, expired:
--                            counted as core::stats::Event says (count below)
--   KEYS[25] redriven  HASH  task id -> entries of it in `finished` made stale
--                            by a redrive (purge.lua skips that many)
--   KEYS[26..29] ids   ZSET  SCHEDULED, SUCCEEDED, DEAD, CANCELED task ids,
--                            score 0, so in id (creation) order: listing,
--                            counting, purging and redriving by state
-- and the turn of the concurrency-key groups (core::flow::Rotation):
--   KEYS[30..39] turn  ZSET  per priority 0..9 of a keyed queue, the groups
--                            with READY tasks (member: the key, '' for the
--                            no-key group) by their place in the turn (a
--                            value of the seq counter: a group joins the
--                            back with its first task's ready_seq, and a
--                            served group goes to the back with a fresh
--                            one); lease.lua serves them round-robin, FIFO
--                            within a group. A queue that never saw a key
--                            keeps no turn: its lists are read directly
--   KEYS[40] ids_waiting ZSET WAITING task ids, likewise
-- and dependencies and deadlines (workflow.rs describes the design):
--   KEYS[41] deps      HASH  task id -> '<policy>|<queue> <id>,<queue> <id>...':
--                            what the task depends on (policy 'c' cancel, 'r' run)
--   KEYS[42] pending   HASH  task id -> '<id>,<id>...': those not yet ended
--   KEYS[43] dependents HASH task id -> '<queue> <id>,...': tasks waiting on it
--   KEYS[44] readers   HASH  task id -> '<id>,...': unfinished tasks depending
--                            on it (it is kept past retention while any)
--   KEYS[45] held      HASH  task id -> 1: finished, past retention, kept for readers
--   KEYS[46] outbox    LIST  events for other queues, '<kind> <seq> ...' (outbox())
--   KEYS[47] outbox_seq counter: makes each outbox entry unique
--   KEYS[48] outbox_lock STRING: the replica delivering the outbox (workflow.rs)
--   KEYS[49] expiring  ZSET  tasks with a deadline by deadline (removed lazily
--                            once delivered: expire_due checks the state)
-- and three common arguments:
--   ARGV[1] now in ms since the Unix epoch, or '' to use Redis's clock (TIME)
--   ARGV[2] the pub/sub channel for events ("ready <queue> <n>",
--           "lost <task id> <lease id> <1 if canceled, else 0>",
--           "changed <task id>" for a watched task)
--   ARGV[3] the queue's name
-- Each script's own arguments start at ARGV[4].
--
-- A task is in exactly one of ready/leased/scheduled/finished: the one of its
-- state. Scripts check everything they need before their first write, so a
-- refused call leaves nothing half done.
--
-- A task record as scripts return it is three strings: meta, body, result
-- (result '' unless SUCCEEDED; ack leaves it '' as the caller has it).
--
-- Out of memory (maxmemory, noeviction): Redis refuses a script's first write
-- if that command may grow memory (HSET, ZADD, INCR, ...) and then lets the
-- rest of the script run. So enqueue fails whole (Full) while every script
-- that changes an existing task starts by taking it out of its index (ZREM)
-- and runs anyway: workers can still lease, extend and settle, draining a
-- full Redis instead of stalling on it.

local K_META, K_BODY, K_RESULTS = KEYS[1], KEYS[2], KEYS[3]
local K_LEASED, K_SCHEDULED, K_FINISHED = KEYS[4], KEYS[5], KEYS[6]
local K_SEQ, K_LEASE, K_DEDUP, K_REQUESTS, K_WATCHED = KEYS[7], KEYS[8], KEYS[9], KEYS[10], KEYS[11]
local K_FLOW = KEYS[12]
local MAX_PRIORITY = 9
local K_PAUSED, K_TOTALS, K_REDRIVEN = KEYS[23], KEYS[24], KEYS[25]
local K_IDS_SCHEDULED, K_IDS_SUCCEEDED, K_IDS_DEAD, K_IDS_CANCELED = KEYS[26], KEYS[27], KEYS[28], KEYS[29]
local K_IDS_WAITING, K_DEPS, K_PENDING, K_DEPENDENTS = KEYS[40], KEYS[41], KEYS[42], KEYS[43]
local K_READERS, K_HELD, K_OUTBOX, K_OUTBOX_SEQ, K_OUTBOX_LOCK = KEYS[44], KEYS[45], KEYS[46], KEYS[47], KEYS[48]
local K_EXPIRING = KEYS[49]

-- The ready list of priority `p` (clamped to 0..9): the no-key group's.
local function k_ready(p)
  return KEYS[13 + math.min(math.max(p, 0), MAX_PRIORITY)]
end

-- The turn of the key groups of priority `p` (clamped to 0..9).
local function k_turn(p)
  return KEYS[30 + math.min(math.max(p, 0), MAX_PRIORITY)]
end

-- The ready list of the group `key` ('' or nil: no key) at priority `p`;
-- under the queue's hash tag, so in its slot (keys.rs documents the name).
local function k_group(p, key)
  if not key or key == '' then
    return k_ready(p)
  end
  return k_ready(p) .. ':k:' .. key
end
local CHANNEL, QUEUE = ARGV[2], ARGV[3]

-- The meta record (record.rs reads the same layout), little-endian, numbers
-- above 2^32 as f64 (exact integers below 2^53), strings as a u32 length and
-- their bytes. Two parts, so leasing and acking touch only the first:
--   HEAD: state (u8); attempt, response bytes (u32: core::budget::task_bytes); lease_id, lease_expire,
--         update_time (f64); lease worker (string)
--   TAIL: priority (u8); max_attempts (u32); create_time, scheduled_time,
--         ready_seq (f64); last error, dedup key, request id (strings)
local HEAD = '<BI4I4dddI4c0'
local TAIL = '<BI4dddI4c0I4c0I4c0'
local WHOLE = HEAD .. string.sub(TAIL, 2)

local SCHEDULED, READY, LEASED, SUCCEEDED, DEAD, CANCELED, WAITING = 1, 2, 3, 4, 5, 6, 7

-- The id index of `state` (nil for READY and LEASED, which their list and
-- set already hold per queue).
local function k_ids(state)
  if state == SCHEDULED then
    return K_IDS_SCHEDULED
  elseif state == SUCCEEDED then
    return K_IDS_SUCCEEDED
  elseif state == DEAD then
    return K_IDS_DEAD
  elseif state == CANCELED then
    return K_IDS_CANCELED
  elseif state == WAITING then
    return K_IDS_WAITING
  end
  return nil
end

-- Adds `n` to the queue's total `event` (core::stats::Event: 'enqueued',
-- 'delivered', 'acked', 'nacked', 'dead', 'expired').
local function count(event, n)
  if n > 0 then
    redis.call('HINCRBY', K_TOTALS, event, n)
  end
end

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

-- The task table of a meta record.
local function decode(id, raw)
  local st, att, size, lid, lexp, ut, worker, at = struct.unpack(HEAD, raw)
  local pr, max, ct, sched, seq, err, dedup, req = struct.unpack(TAIL, raw, at)
  -- One constructor, so the table is allocated at its size once.
  return {
    id = id, state = st, priority = pr, attempt = att, max_attempts = max, size = size, lease_id = lid,
    lease_expire = lexp, create_time = ct, update_time = ut, scheduled_time = sched, ready_seq = seq,
    lease_worker = worker, last_error = err, dedup_key = dedup, request_id = req,
  }
end

local function pack_head(state, attempt, size, lease_id, lease_expire, update_time, worker)
  return struct.pack(HEAD, state, attempt, size, lease_id, lease_expire, update_time, #worker, worker)
end

-- A whole meta record in one call (new tasks; what decode reads).
local function pack_whole(state, attempt, size, lease_id, lease_expire, update_time, worker, priority,
    max_attempts, create_time, scheduled_time, ready_seq, err, dedup, req)
  return struct.pack(WHOLE, state, attempt, size, lease_id, lease_expire, update_time, #worker, worker, priority,
    max_attempts, create_time, scheduled_time, ready_seq, #err, err, #dedup, dedup, #req, req)
end

local function encode(t)
  return pack_whole(t.state, t.attempt, t.size, t.lease_id, t.lease_expire, t.update_time, t.lease_worker,
    t.priority, t.max_attempts, t.create_time, t.scheduled_time, t.ready_seq, t.last_error, t.dedup_key,
    t.request_id)
end

-- The head's fields of a meta record, then where its tail starts.
local function unpack_head(raw)
  return struct.unpack(HEAD, raw)
end

-- The task `id` and its meta record, or nil.
local function load_raw(id)
  local raw = redis.call('HGET', K_META, id)
  if not raw then
    return nil
  end
  return decode(id, raw), raw
end

local function load(id)
  return (load_raw(id))
end

-- Stores the task's meta record and returns it.
local function save(t)
  local raw = encode(t)
  redis.call('HSET', K_META, t.id, raw)
  return raw
end

-- The whole record of `t` (saved as `raw`) as scripts return it.
local function record(t, raw)
  local result = ''
  if t.state == SUCCEEDED then
    result = redis.call('HGET', K_RESULTS, t.id) or ''
  end
  return raw, redis.call('HGET', K_BODY, t.id) or '', result
end

local function is_final(state)
  return state >= SUCCEEDED and state <= CANCELED
end

-- core::lease::check: nil when `presented` is the live lease at `now` of a
-- task with these fields, else the reason ('canceled' or 'mismatch').
local function check_lease(state, lease_id, lease_expire, presented, now)
  if lease_id == 0 or lease_id ~= presented then
    return 'mismatch'
  end
  if state == CANCELED then
    return 'canceled'
  end
  if state == LEASED and lease_expire > now then
    return nil
  end
  return 'mismatch'
end

local function lease_error(t, presented, now)
  return check_lease(t.state, t.lease_id, t.lease_expire, presented, now)
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

-- Whether tasks of this queue carry concurrency keys (then LEASED ones are
-- counted per key, `k:<key>` in K_FLOW, and READY ones wait in key groups
-- that take turns, KEYS[30..39]).
local function keyed()
  return redis.call('HEXISTS', K_FLOW, 'keyed') == 1
end

-- The concurrency key of task `id`, or nil.
local function task_key(id)
  if not keyed() then
    return nil
  end
  return redis.call('HGET', K_FLOW, 't:' .. id) or nil
end

-- Appends `ids` (READY, of the group `key` at priority `p`) to their group's
-- list; a group that had no READY task joins the back of the turn with
-- `score` (the first one's ready_seq). A queue without keys keeps no turn.
local function push_ready(p, key, ids, score)
  if key == '' then
    key = nil
  end
  local list = k_group(p, key)
  local n = 0
  for i = 1, #ids, 4000 do
    n = redis.call('RPUSH', list, unpack(ids, i, math.min(i + 3999, #ids)))
  end
  if n == #ids and (key or keyed()) then
    redis.call('ZADD', k_turn(p), 'NX', score, key or '')
  end
end

-- The ready lists of priority `p`, the no-key group's first, then the key
-- groups' in turn order; at most `limit` (all when nil).
local function ready_lists(p, limit)
  local lists = {k_ready(p)}
  for _, key in ipairs(redis.call('ZRANGE', k_turn(p), 0, (limit or 0) - 1)) do
    if key ~= '' then
      lists[#lists + 1] = k_group(p, key)
    end
  end
  return lists
end

-- Takes a task that has not finished out of the index of its state (a
-- finished task changes state only by redrive.lua). Out of a ready list is O(n): only
-- cancel takes a READY task out of turn. A group left empty leaves the turn.
local function unindex(t)
  if t.state == READY then
    local key = task_key(t.id)
    local list = k_group(t.priority, key)
    if redis.call('LREM', list, 1, t.id) == 0 and key then
      -- Put in the no-key list by an older build.
      key, list = nil, k_ready(t.priority)
      redis.call('LREM', list, 1, t.id)
    end
    if keyed() and redis.call('EXISTS', list) == 0 then
      redis.call('ZREM', k_turn(t.priority), key or '')
    end
  elseif t.state == LEASED then
    redis.call('ZREM', K_LEASED, t.id)
  elseif t.state == SCHEDULED then
    redis.call('ZREM', K_SCHEDULED, t.id)
    redis.call('ZREM', K_IDS_SCHEDULED, t.id) -- admin: the id index
  elseif t.state == WAITING then
    redis.call('ZREM', K_IDS_WAITING, t.id)
  end
end

-- READY at the back of its group at its priority level. (Numbers passed to
-- redis.call keep every digit, Redis formats them with %.17g, so times go to
-- Redis as numbers, unformatted.)
local function make_ready(t)
  t.state = READY
  t.ready_seq = redis.call('INCR', K_SEQ)
  push_ready(t.priority, task_key(t.id), {t.id}, t.ready_seq)
end

local function make_scheduled(t, due)
  t.state = SCHEDULED
  t.scheduled_time = due
  redis.call('ZADD', K_SCHEDULED, due, t.id)
  redis.call('ZADD', K_IDS_SCHEDULED, 0, t.id) -- admin: the id index
end

-- The finished list's entry of task `id`, to be purged at `purge_at`.
local function finished_entry(purge_at, id)
  return fmt(purge_at) .. ':' .. id
end

-- A final state, kept until update_time + retention. The finished list is
-- purged from its head and stops at the first entry not yet due, so tasks
-- leave in the order they finished: that is core::transition::purge_time
-- (a task is not removed before one that finished earlier), with no read of
-- the list's tail on the hot path.
local function make_final(t, state, retention)
  t.state = state
  redis.call('RPUSH', K_FINISHED, finished_entry(t.update_time + retention, t.id))
  redis.call('ZADD', k_ids(state), 0, t.id) -- admin: the id index
end

-- Whether an entry of task `id` just taken from the head of the finished
-- list is stale: a redrive made the task leave the finished state that entry
-- was for. A task's entries are in the order it finished, so its stale ones
-- come first; `redriven` counts those not yet taken.
local function stale(id)
  if not redis.call('HGET', K_REDRIVEN, id) then
    return false
  end
  if redis.call('HINCRBY', K_REDRIVEN, id, -1) <= 0 then
    redis.call('HDEL', K_REDRIVEN, id)
  end
  return true
end

-- Removes task `id` and what refers to it (its record `t`): its parts, its
-- request id and dedup key when they still point to it. The caller takes it
-- out of the index of its state.
local function remove(t)
  local id = t.id
  redis.call('HDEL', K_META, id)
  redis.call('HDEL', K_BODY, id)
  redis.call('HDEL', K_RESULTS, id)
  redis.call('HDEL', K_WATCHED, id)
  redis.call('HDEL', K_REDRIVEN, id)
  redis.call('HDEL', K_FLOW, 't:' .. id, 's:' .. id)
  redis.call('HDEL', K_DEPS, id)
  redis.call('HDEL', K_PENDING, id)
  redis.call('HDEL', K_DEPENDENTS, id)
  redis.call('HDEL', K_READERS, id)
  redis.call('HDEL', K_HELD, id)
  redis.call('ZREM', K_EXPIRING, id)
  if t.request_id ~= '' and redis.call('HGET', K_REQUESTS, t.request_id) == id then
    redis.call('HDEL', K_REQUESTS, t.request_id)
  end
  if t.dedup_key ~= '' and redis.call('HGET', K_DEDUP, t.dedup_key) == id then
    redis.call('HDEL', K_DEDUP, t.dedup_key)
  end
end

-- Drops what a queue without tasks keeps: its totals, and finished entries
-- and indexes left (stale ones only). Its pause stays.
local function forget_queue()
  redis.call('DEL', K_TOTALS, K_REDRIVEN, K_FINISHED, K_IDS_SCHEDULED, K_IDS_SUCCEEDED, K_IDS_DEAD, K_IDS_CANCELED)
end

-- Tells the replicas that `n` tasks of the queue became READY.
local function publish_ready(n)
  redis.call('PUBLISH', CHANNEL, 'ready ' .. QUEUE .. ' ' .. n)
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
  return redis.call('ZRANGEBYSCORE', key, '-inf', now, 'LIMIT', 0, limit)
end

-- Runs `cmd key a1 a2 ...` over `args` in slices, since Lua's unpack is
-- bounded by the C stack (LUAI_MAXCSTACK, 8000).
local function variadic(cmd, key, args)
  local n = #args
  for i = 1, n, 4000 do
    redis.call(cmd, key, unpack(args, i, math.min(i + 3999, n)))
  end
end

-- HMGET of many fields, in slices like `variadic`.
local function hmget(key, fields)
  local n = #fields
  if n <= 4000 then
    return redis.call('HMGET', key, unpack(fields))
  end
  local out = {}
  for i = 1, n, 4000 do
    for _, v in ipairs(redis.call('HMGET', key, unpack(fields, i, math.min(i + 3999, n)))) do
      out[#out + 1] = v
    end
  end
  return out
end

-- core::flow::Bucket::available: whole tokens of the queue's bucket at `now`
-- (refilled at `per_ms` up to `burst`; a new bucket is full), and the
-- fractional count to store back once the caller has taken its share.
local function bucket_tokens(now, per_ms, burst)
  local b = redis.call('HMGET', K_FLOW, 'tokens', 'at')
  local tokens, at = tonumber(b[1]), tonumber(b[2])
  if not tokens then
    return burst, now
  end
  local elapsed = math.max(now - at, 0)
  return math.min(tokens + elapsed * per_ms, burst), math.max(at, now)
end

-- The concurrency key of each of `ids` (false for none), in order.
local function task_keys(ids)
  local fields = {}
  for i, id in ipairs(ids) do
    fields[i] = 't:' .. id
  end
  return hmget(K_FLOW, fields)
end

-- Tasks `ids` left LEASED: their per-key permits go back. Every script that
-- takes a task out of the leased set calls this, so no path forgets it.
local function release_keys(ids)
  if #ids == 0 or not keyed() then
    return
  end
  for _, key in ipairs(task_keys(ids)) do
    if key then
      if redis.call('HINCRBY', K_FLOW, 'k:' .. key, -1) <= 0 then
        redis.call('HDEL', K_FLOW, 'k:' .. key)
      end
    end
  end
end

-- Whether tasks of this queue need shared semaphores (`s:<id>` in K_FLOW).
local function needs_semaphores()
  return redis.call('HEXISTS', K_FLOW, 'sems') == 1
end

-- Dependencies and deadlines (workflow.rs). Lists in hash values are
-- comma-separated; these keep each entry once, so replays change nothing.

-- The entries of the list in `key`'s field `field`.
local function list_of(key, field)
  local out = {}
  for entry in string.gmatch(redis.call('HGET', key, field) or '', '[^,]+') do
    out[#out + 1] = entry
  end
  return out
end

-- Adds `entry` to the list, once.
local function list_add(key, field, entry)
  local entries = list_of(key, field)
  for _, e in ipairs(entries) do
    if e == entry then
      return
    end
  end
  entries[#entries + 1] = entry
  redis.call('HSET', key, field, table.concat(entries, ','))
end

-- Takes `entry` out of the list; whether it was there, and what is left.
local function list_remove(key, field, entry)
  local rest, found = {}, false
  for _, e in ipairs(list_of(key, field)) do
    if e == entry and not found then
      found = true
    else
      rest[#rest + 1] = e
    end
  end
  if not found then
    return false, rest
  end
  if #rest == 0 then
    redis.call('HDEL', key, field)
  else
    redis.call('HSET', key, field, table.concat(rest, ','))
  end
  return true, rest
end

-- Appends an event for another queue to this queue's outbox, unique by its
-- sequence number: '<kind> <seq> <fields...>'.
local function outbox(kind, a, b, c, d)
  local seq = redis.call('INCR', K_OUTBOX_SEQ)
  local entry = kind .. ' ' .. seq .. ' ' .. a .. ' ' .. b .. ' ' .. c
  if d then
    entry = entry .. ' ' .. d
  end
  redis.call('RPUSH', K_OUTBOX, entry)
end

-- Whether this queue's tasks take part in dependencies at all (one check per
-- call, so scripts of queues without them pay nothing more).
local function in_workflow()
  return redis.call('EXISTS', K_DEPENDENTS, K_DEPS) > 0
end

-- Mirrors the table's `ended` (store/table/dependencies.rs): task `id`
-- ended in `state` (final): every task waiting on it gets an `end` event,
-- and it stops reading its own dependencies (a `rel` event each).
local function on_end(id, state)
  for _, entry in ipairs(list_of(K_DEPENDENTS, id)) do
    local q, waiter = string.match(entry, '^(%S+) (%S+)$')
    outbox('end', q, waiter, id, state)
  end
  redis.call('HDEL', K_DEPENDENTS, id)
  local deps = redis.call('HGET', K_DEPS, id)
  if deps then
    for entry in string.gmatch(string.sub(deps, 3), '[^,]+') do
      local q, dep = string.match(entry, '^(%S+) (%S+)$')
      outbox('rel', q, dep, id)
    end
  end
end

-- Mirrors core::dependency::expired and the table's expire_due: cancels as
-- 'expired' every WAITING, SCHEDULED or READY task whose deadline is due at
-- `now` (at most `limit`); returns their ids. A delivered task's entry just
-- leaves the set.
local function expire_due(now, retention, limit)
  local out = {}
  local watching = any_watched()
  for _, id in ipairs(due(K_EXPIRING, now, limit)) do
    redis.call('ZREM', K_EXPIRING, id)
    local t = load(id)
    if t and (t.state == WAITING or t.state == SCHEDULED or t.state == READY) then
      unindex(t)
      t.update_time = now
      t.last_error = 'expired'
      make_final(t, CANCELED, retention)
      save(t)
      on_end(id, CANCELED)
      publish_changed(id, watching)
      out[#out + 1] = id
    end
  end
  return out
end
