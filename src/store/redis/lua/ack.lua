-- ack: marks leased tasks SUCCEEDED, each alone: one item's refusal changes
-- nothing of it and does not stop the others (a batch acts like one ack per
-- item, in order).
-- KEYS: the queue's keys (lib.lua); writes meta, results, leased, finished.
-- ARGV[4]: the queue's retention of finished tasks (ms)
-- ARGV[5..]: one triple per item: task id, lease id presented by the worker,
--            result bytes
-- Returns: {status_1, meta_1, body_1, status_2, ...} in argument order: status
--          'ok' with the task's new meta record and its body (the result is
--          the caller's), or 'not_found' | 'mismatch' | 'canceled' with ''
--          and ''.
-- Publishes: `changed <id>` per acked task that is watched.

local now = clock()
local retention = tonumber(ARGV[4])
local watching = any_watched()

local ids = {}
for i = 5, #ARGV, 3 do
  ids[#ids + 1] = ARGV[i]
end
local raws = hmget(K_META, ids)

-- Tasks already settled by an earlier item of this call, by id.
local seen = {}
local acked, acked_ids, out = {}, {}, {}
for n, id in ipairs(ids) do
  local t = seen[id]
  if not t and raws[n] then
    t = decode(id, raws[n])
    seen[id] = t
  end
  local err = 'not_found'
  if t then
    err = lease_error(t, tonumber(ARGV[3 + 3 * n]), now)
  end
  if err then
    out[#out + 1] = err
    out[#out + 1] = ''
    out[#out + 1] = ''
  else
    t.state = SUCCEEDED
    t.result = ARGV[4 + 3 * n]
    clear_lease(t)
    t.update_time = now
    acked[#acked + 1] = t
    acked_ids[#acked_ids + 1] = id
    out[#out + 1] = 'ok'
    out[#out + 1] = t -- replaced by its meta record below
    out[#out + 1] = #acked
  end
end
if #acked == 0 then
  return out
end

-- Out of the leased set first (see lib.lua: acks work when Redis is full).
variadic('ZREM', K_LEASED, acked_ids)
local finished, metas, results = {}, {}, {}
local prefix = finished_entry(now + retention, '')
for _, t in ipairs(acked) do
  finished[#finished + 1] = prefix .. t.id
  metas[#metas + 1] = t.id
  metas[#metas + 1] = encode(t)
  if t.result ~= '' then
    results[#results + 1] = t.id
    results[#results + 1] = t.result
  end
  publish_changed(t.id, watching)
end
variadic('RPUSH', K_FINISHED, finished)
variadic('HSET', K_META, metas)
if #results > 0 then
  variadic('HSET', K_RESULTS, results)
end
local bodies = hmget(K_BODY, acked_ids)
for i = 1, #out, 3 do
  if out[i] == 'ok' then
    local n = out[i + 2]
    out[i + 1] = metas[2 * n]
    out[i + 2] = bodies[n] or ''
  end
end
return out
