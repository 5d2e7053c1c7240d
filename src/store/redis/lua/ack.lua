-- ack: marks leased tasks SUCCEEDED, each alone: one item's refusal changes
-- nothing of it and does not stop the others (a batch acts like one ack per
-- item, in order).
-- KEYS: the queue's keys (lib.lua); writes meta, results, leased, finished,
--       ids_succeeded, totals.
-- ARGV[4]: the queue's retention of finished tasks (ms)
-- ARGV[5..]: one triple per item: task id, lease id presented by the worker,
--            result bytes
-- Returns: {status_1, meta_1, body_1, status_2, ...} in argument order: status
--          'ok' with the task's new meta record and its body (the result is
--          the caller's), or 'not_found' | 'mismatch' | 'canceled' with ''
--          and ''; then 'outbox' when the acks put events in the outbox
--          (for the caller to deliver).
-- Publishes: `changed <id>` per acked task that is watched.

local now = clock()
local retention = tonumber(ARGV[4])
local watching = any_watched()

local ids = {}
for i = 5, #ARGV, 3 do
  ids[#ids + 1] = ARGV[i]
end
-- Each task's meta record as it stands; an ack rewrites it, so an item that
-- repeats a task sees what the earlier item did.
local current = {}
for n, raw in ipairs(hmget(K_META, ids)) do
  if raw and not current[ids[n]] then
    current[ids[n]] = raw
  end
end

local acked, metas, results, out = {}, {}, {}, {}
for n, id in ipairs(ids) do
  local raw = current[id]
  local err = 'not_found'
  local state, attempt, size, lease_id, lease_expire, _, _, tail
  if raw then
    state, attempt, size, lease_id, lease_expire, _, _, tail = unpack_head(raw)
    err = check_lease(state, lease_id, lease_expire, tonumber(ARGV[3 + 3 * n]), now)
  end
  if err then
    out[#out + 1] = err
    out[#out + 1] = ''
    out[#out + 1] = ''
  else
    local meta = pack_head(SUCCEEDED, attempt, size, 0, 0, now, '') .. string.sub(raw, tail)
    current[id] = meta
    acked[#acked + 1] = id
    metas[#metas + 1] = id
    metas[#metas + 1] = meta
    local result = ARGV[4 + 3 * n]
    if result ~= '' then
      results[#results + 1] = id
      results[#results + 1] = result
    end
    out[#out + 1] = 'ok'
    out[#out + 1] = meta
    out[#out + 1] = #acked -- replaced by the body below
    publish_changed(id, watching)
  end
end
if #acked == 0 then
  return out
end

-- Out of the leased set first (see lib.lua: acks work when Redis is full).
variadic('ZREM', K_LEASED, acked)
release_keys(acked)
local prefix = finished_entry(now + retention, '')
local finished = {}
for i, id in ipairs(acked) do
  finished[i] = prefix .. id
end
variadic('RPUSH', K_FINISHED, finished)
-- admin: the id index of SUCCEEDED (score 0: by id), and the totals.
local indexed = {}
for i, id in ipairs(acked) do
  indexed[2 * i - 1] = 0
  indexed[2 * i] = id
end
variadic('ZADD', K_IDS_SUCCEEDED, indexed)
count('acked', #acked)
-- Tasks waiting on these hear of it through the outbox (workflow.rs).
local events = false
if in_workflow() then
  local before = redis.call('LLEN', K_OUTBOX)
  for _, id in ipairs(acked) do
    on_end(id, SUCCEEDED)
  end
  events = redis.call('LLEN', K_OUTBOX) > before
end
variadic('HSET', K_META, metas)
if #results > 0 then
  variadic('HSET', K_RESULTS, results)
end
local bodies = hmget(K_BODY, acked)
for i = 1, #out, 3 do
  if out[i] == 'ok' then
    out[i + 2] = bodies[out[i + 2]] or ''
  end
end
if events then
  out[#out + 1] = 'outbox'
end
return out
