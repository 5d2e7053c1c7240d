-- enqueue: creates tasks in one queue, honouring request ids and dedup keys.
-- KEYS: the queue's keys (lib.lua); writes meta, body, ready (and key
--       groups' lists), turn, scheduled, seq, dedup, requests, flow, totals,
--       ids_scheduled.
-- ARGV[4]: the queue's dedup window (ms)
-- ARGV[5]: '1' when the caller registered the queue in tb:queues just before
--          this call, '0' when it only believes it registered
-- ARGV[6..]: thirteen per new task: id, body (record.rs), priority,
--            max_attempts, scheduled time (ms; due at once if not after now),
--            response bytes (core::budget::task_bytes), dedup key, request
--            id, concurrency key ('' for none), semaphore names (comma-separated,
--            '' for none), dependencies ('<queue> <id>,...', '' for none: the
--            task is then WAITING and registers with each through the
--            outbox, workflow.rs), dependency failure policy ('c' or 'r'),
--            deadline (ms, '' for none).
-- Returns: {status, new_1, meta_1, body_1, result_1, new_2, ...} in argument
--          order: new is 1 for a created task (body and result then '': the
--          caller has them) and 0 when an existing task (same request id, or
--          same dedup key still counting) is returned instead;
--          status is 'first' when the queue held no task before (the caller
--          then registers it in tb:queues again: a sweep may have removed it)
--          and 'ok' otherwise;
--          or {'collision', id} when a new task's id is taken (nothing written);
--          or {'missing', id...} when a new task names a dependency the
--          caller found gone ('- <id>' in its list; nothing written): a task
--          answered by its request id or dedup key is not refused for it;
--          or {'empty'} when the queue holds no task and ARGV[5] is '0'
--          (nothing written): a sweep may have forgotten it, so the caller
--          registers it (within max_queues) and calls again with '1'.
-- Publishes: `ready <queue> <n>` once if n tasks became READY.

local now = clock()
local window = tonumber(ARGV[4])
local PER = 13
local TASKS_AT = 6

if ARGV[5] ~= '1' and redis.call('EXISTS', K_META) == 0 then
  return {'empty'}
end

local ids = {}
for i = TASKS_AT, #ARGV, PER do
  ids[#ids + 1] = ARGV[i]
end
for i, taken in ipairs(hmget(K_META, ids)) do
  if taken then
    return {'collision', ids[i]}
  end
end

-- Request ids and dedup keys of tasks created earlier in this call.
local batch_requests, batch_dedup = {}, {}

-- The id of the task an earlier request already created, if it still counts.
local function existing(request_id, dedup_key)
  if request_id ~= '' then
    local id = batch_requests[request_id] or redis.call('HGET', K_REQUESTS, request_id)
    if id and (batch_requests[request_id] or redis.call('HEXISTS', K_META, id) == 1) then
      return id
    end
  end
  if dedup_key == '' then
    return nil
  end
  if batch_dedup[dedup_key] then
    return batch_dedup[dedup_key]
  end
  local id = redis.call('HGET', K_DEDUP, dedup_key)
  local old = id and load(id)
  if old and (not is_final(old.state) or old.update_time + window > now) then
    return id
  end
  return nil
end

-- First pass: for each argument group (its first index `i`), the existing
-- task's id, or `true` for a new task; and how many new tasks are READY now.
local found, readies = {}, 0
for i = TASKS_AT, #ARGV, PER do
  local request_id, dedup_key = ARGV[i + 7], ARGV[i + 6]
  local old = existing(request_id, dedup_key)
  if old then
    found[#found + 1] = old
  else
    local missing = {}
    for entry in string.gmatch(ARGV[i + 10], '[^,]+') do
      local gone = string.match(entry, '^%- (%S+)$')
      if gone then
        missing[#missing + 1] = gone
      end
    end
    if #missing > 0 then
      return {'missing', unpack(missing)}
    end
    found[#found + 1] = true
    if ARGV[i + 10] == '' and tonumber(ARGV[i + 4]) <= now then
      readies = readies + 1
    end
    if request_id ~= '' then
      batch_requests[request_id] = ARGV[i]
    end
    if dedup_key ~= '' then
      batch_dedup[dedup_key] = ARGV[i]
    end
  end
end

-- Second pass: the new tasks' records, one command each for all of them.
local seq = 0
if readies > 0 then
  seq = redis.call('INCRBY', K_SEQ, readies) - readies
end
local metas, bodies, scheduled = {}, {}, {}
-- READY tasks by group: {priority, key, ids, first ready_seq}, in order.
local ready, groups = {}, {}
local out = {redis.call('EXISTS', K_META) == 0 and 'first' or 'ok'}
for n, f in ipairs(found) do
  local i = TASKS_AT + (n - 1) * PER
  if f == true then
    local id, priority, due, size = ARGV[i], tonumber(ARGV[i + 2]), tonumber(ARGV[i + 4]), tonumber(ARGV[i + 5])
    local dedup_key, request_id = ARGV[i + 6], ARGV[i + 7]
    local state, ready_seq = SCHEDULED, 0
    local deps = ARGV[i + 10]
    if deps ~= '' then
      -- WAITING (core::task::Task::create), registered with each dependency
      -- by the outbox; its due time kept for when they are done.
      state, due = WAITING, math.max(due, now)
      redis.call('HSET', K_DEPS, id, ARGV[i + 11] .. '|' .. deps)
      local pending = {}
      for entry in string.gmatch(deps, '[^,]+') do
        local q, dep = string.match(entry, '^(%S+) (%S+)$')
        pending[#pending + 1] = dep
        outbox('reg', q, dep, QUEUE, id)
      end
      redis.call('HSET', K_PENDING, id, table.concat(pending, ','))
      redis.call('ZADD', K_IDS_WAITING, 0, id)
    elseif due <= now then
      state, due = READY, now
      seq = seq + 1
      ready_seq = seq
      local group = priority .. ':' .. ARGV[i + 8]
      if not groups[group] then
        groups[group] = {priority, ARGV[i + 8], {}, ready_seq}
        ready[#ready + 1] = groups[group]
      end
      local ids = groups[group][3]
      ids[#ids + 1] = id
    else
      scheduled[#scheduled + 1] = due
      scheduled[#scheduled + 1] = id
    end
    local meta = pack_whole(state, 0, size, 0, 0, now, '', priority, tonumber(ARGV[i + 3]), now, due, ready_seq, '',
      dedup_key, request_id)
    metas[#metas + 1] = id
    metas[#metas + 1] = meta
    bodies[#bodies + 1] = id
    bodies[#bodies + 1] = ARGV[i + 1]
    if request_id ~= '' then
      redis.call('HSET', K_REQUESTS, request_id, id)
    end
    if dedup_key ~= '' then
      redis.call('HSET', K_DEDUP, dedup_key, id)
    end
    if ARGV[i + 8] ~= '' then
      redis.call('HSET', K_FLOW, 'keyed', 1, 't:' .. id, ARGV[i + 8])
    end
    if ARGV[i + 9] ~= '' then
      redis.call('HSET', K_FLOW, 'sems', 1, 's:' .. id, ARGV[i + 9])
    end
    if ARGV[i + 12] ~= '' then
      redis.call('ZADD', K_EXPIRING, tonumber(ARGV[i + 12]), id)
    end
    out[#out + 1] = 1
    out[#out + 1] = meta
    out[#out + 1] = ''
    out[#out + 1] = ''
  else
    out[#out + 1] = 0
    out[#out + 1] = f -- replaced by the record below
    out[#out + 1] = ''
    out[#out + 1] = ''
  end
end
if #metas > 0 then
  variadic('HSET', K_META, metas)
  variadic('HSET', K_BODY, bodies)
end
for _, group in ipairs(ready) do
  push_ready(group[1], group[2], group[3], group[4])
end
if #scheduled > 0 then
  variadic('ZADD', K_SCHEDULED, scheduled)
  -- admin: the id index of SCHEDULED (score 0: by id).
  local ids = {}
  for i = 2, #scheduled, 2 do
    ids[#ids + 1] = 0
    ids[#ids + 1] = scheduled[i]
  end
  variadic('ZADD', K_IDS_SCHEDULED, ids)
end
count('enqueued', #metas / 2) -- admin: created tasks only, not deduplicated ones

-- Earlier tasks (possibly ones created above under another request).
for k = 2, #out, 4 do
  if out[k] == 0 then
    out[k + 1], out[k + 2], out[k + 3] = record(load_raw(out[k + 1]))
  end
end
if readies > 0 then
  publish_ready(readies)
end
return out
