-- enqueue: creates tasks in one queue, honouring request ids and dedup keys.
-- KEYS: the queue's keys (lib.lua); writes meta, body, ready, scheduled, seq,
--       dedup, requests.
-- ARGV[4]: the queue's dedup window (ms)
-- ARGV[5..]: eight per new task: id, body (record.rs), priority,
--            max_attempts, scheduled time (ms; due at once if not after now),
--            payload bytes, dedup key, request id ('' for none).
-- Returns: {'ok', new_1, meta_1, body_1, result_1, new_2, ...} in argument
--          order: new is 1 for a created task (body and result then '': the
--          caller has them) and 0 when an existing task (same request id, or
--          same dedup key still counting) is returned instead;
--          or {'collision', id} when a new task's id is taken (nothing written).
-- Publishes: `ready <queue>` once if a task became READY.

local now = clock()
local window = tonumber(ARGV[4])
local PER = 8

local ids = {}
for i = 5, #ARGV, PER do
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

-- First pass: which tasks are new, and which of those are READY at once.
local news, found, readies = {}, {}, 0
for i = 5, #ARGV, PER do
  local request_id, dedup_key = ARGV[i + 7], ARGV[i + 6]
  local old = existing(request_id, dedup_key)
  if old then
    found[#found + 1] = old
  else
    local due_time = math.max(tonumber(ARGV[i + 4]), now)
    local t = {
      id = ARGV[i], state = SCHEDULED, priority = tonumber(ARGV[i + 2]), attempt = 0,
      max_attempts = tonumber(ARGV[i + 3]), size = tonumber(ARGV[i + 5]), lease_id = 0, lease_expire = 0,
      create_time = now, update_time = now, scheduled_time = due_time, ready_seq = 0, lease_worker = '',
      last_error = '', dedup_key = dedup_key, request_id = request_id, body = ARGV[i + 1],
    }
    if due_time <= now then
      t.state = READY
      readies = readies + 1
    end
    if request_id ~= '' then
      batch_requests[request_id] = t.id
    end
    if dedup_key ~= '' then
      batch_dedup[dedup_key] = t.id
    end
    news[#news + 1] = t
    found[#found + 1] = t
  end
end

-- Second pass: the writes, one command each for all new tasks.
local seq = 0
if readies > 0 then
  seq = redis.call('INCRBY', K_SEQ, readies) - readies
end
local metas, bodies, ready, scheduled = {}, {}, {}, {}
for _, t in ipairs(news) do
  if t.state == READY then
    seq = seq + 1
    t.ready_seq = seq
    ready[#ready + 1] = ready_score(t)
    ready[#ready + 1] = t.id
  else
    scheduled[#scheduled + 1] = t.scheduled_time
    scheduled[#scheduled + 1] = t.id
  end
  t.meta = encode(t)
  metas[#metas + 1] = t.id
  metas[#metas + 1] = t.meta
  bodies[#bodies + 1] = t.id
  bodies[#bodies + 1] = t.body
  if t.request_id ~= '' then
    redis.call('HSET', K_REQUESTS, t.request_id, t.id)
  end
  if t.dedup_key ~= '' then
    redis.call('HSET', K_DEDUP, t.dedup_key, t.id)
  end
end
if #news > 0 then
  variadic('HSET', K_META, metas)
  variadic('HSET', K_BODY, bodies)
end
if #ready > 0 then
  variadic('ZADD', K_READY, ready)
end
if #scheduled > 0 then
  variadic('ZADD', K_SCHEDULED, scheduled)
end

local out = {'ok'}
for _, f in ipairs(found) do
  if type(f) == 'table' then
    out[#out + 1] = 1
    out[#out + 1] = f.meta
    out[#out + 1] = ''
    out[#out + 1] = ''
  else
    -- An earlier task (possibly one created above under another request).
    local meta, body, result = record(load_raw(f))
    out[#out + 1] = 0
    out[#out + 1] = meta
    out[#out + 1] = body
    out[#out + 1] = result
  end
end
if readies > 0 then
  publish_ready()
end
return out
