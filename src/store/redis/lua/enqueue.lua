-- enqueue: creates tasks in one queue, honouring request ids and dedup keys.
-- KEYS: the queue's keys (lib.lua); writes tasks, ready, scheduled, seq, dedup, requests.
-- ARGV[3]: the queue's dedup window (ms)
-- ARGV[4..]: one record per new task (MessagePack, as record.rs writes it);
--            the script sets state, times and ready_seq from `now`.
-- Returns: {'ok', new_1, record_1, new_2, record_2, ...}, in argument order,
--          where new is 1 for a created task and 0 when an existing task (same
--          request id, or same dedup key still counting) is returned instead;
--          or {'collision', id} when a new task's id is taken (nothing written).
-- Publishes: `ready <queue>` once if a task became READY.

local now = clock()
local window = tonumber(ARGV[3])

local news = {}
for i = 4, #ARGV do
  local t = cmsgpack.unpack(ARGV[i])
  if redis.call('HEXISTS', K_TASKS, t.id) == 1 then
    return {'collision', t.id}
  end
  news[#news + 1] = t
end

-- The record an earlier request already created, if it still counts.
local function existing(t)
  if t.request_id ~= '' then
    local id = redis.call('HGET', K_REQUESTS, t.request_id)
    local raw = id and redis.call('HGET', K_TASKS, id)
    if raw then
      return raw
    end
  end
  if t.dedup_key == '' then
    return nil
  end
  local id = redis.call('HGET', K_DEDUP, t.dedup_key)
  local raw = id and redis.call('HGET', K_TASKS, id)
  if not raw then
    return nil
  end
  local old = cmsgpack.unpack(raw)
  if not is_final(old.state) or old.update_time + window > now then
    return raw
  end
  return nil
end

local out = {'ok'}
local ready = false
for _, t in ipairs(news) do
  local raw = existing(t)
  if raw then
    out[#out + 1] = 0
    out[#out + 1] = raw
  else
    local due_time = math.max(t.scheduled_time, now)
    t.create_time = now
    t.update_time = now
    t.attempt = 0
    t.ready_seq = 0
    if due_time > now then
      make_scheduled(t, due_time)
    else
      t.scheduled_time = due_time
      make_ready(t)
      ready = true
    end
    if t.request_id ~= '' then
      redis.call('HSET', K_REQUESTS, t.request_id, t.id)
    end
    if t.dedup_key ~= '' then
      redis.call('HSET', K_DEDUP, t.dedup_key, t.id)
    end
    out[#out + 1] = 1
    out[#out + 1] = save(t)
  end
end
if ready then
  publish_ready(news[1].queue)
end
return out
