-- redrive: DEAD tasks back to READY at the back of their priority level,
-- with attempt 0 and their last error kept (until the next attempt sets it).
-- Mirrors Table::redrive (store/table/admin.rs): tasks not DEAD are skipped.
-- KEYS: the queue's keys (lib.lua); writes meta, ids_dead, redriven, ready, seq,
--       outbox (a redriven task with dependencies reads them again).
-- ARGV[4]: at most this many tasks
-- ARGV[5..]: the task ids; none: the oldest DEAD tasks (by id)
-- Returns: {id...}: the tasks redriven.
-- Publishes: `ready <queue> <n>` once if n > 0 tasks were redriven; `changed
--            <id>` per watched task.
--
-- A DEAD task has an entry in the finished list (make_final); once redriven
-- that entry is stale: `redriven` counts it, so purge.lua skips it instead
-- of removing the task (see `stale` in lib.lua), with no O(n) LREM here.

local now = clock()
local limit = tonumber(ARGV[4])
local ids = {}
if #ARGV >= 5 then
  for i = 5, #ARGV do
    ids[#ids + 1] = ARGV[i]
  end
else
  ids = redis.call('ZRANGE', K_IDS_DEAD, 0, limit - 1)
end

local out = {}
if #ids == 0 then
  return out
end
local watching = any_watched()
local done = {}
for i, raw in ipairs(hmget(K_META, ids)) do
  if #out >= limit then
    break
  end
  local id = ids[i]
  -- An id given twice is redriven once (its record here is the one read
  -- before the first time).
  if raw and struct.unpack('<B', raw) == DEAD and not done[id] then
    done[id] = true
    redis.call('ZREM', K_IDS_DEAD, id)
    redis.call('HINCRBY', K_REDRIVEN, id, 1)
    local t = decode(id, raw)
    t.attempt = 0
    t.update_time = now
    make_ready(t)
    save(t)
    -- It reads its dependencies again while it runs (as the table's
    -- `reopened`): registered again through the outbox (workflow.rs).
    local deps = redis.call('HGET', K_DEPS, id)
    if deps then
      for entry in string.gmatch(string.sub(deps, 3), '[^,]+') do
        local q, dep = string.match(entry, '^(%S+) (%S+)$')
        outbox('reg', q, dep, QUEUE, id)
      end
    end
    publish_changed(id, watching)
    out[#out + 1] = id
  end
end
if #out > 0 then
  publish_ready(#out)
end
return out
