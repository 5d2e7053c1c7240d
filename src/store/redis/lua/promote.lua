-- promote: makes SCHEDULED tasks due at `now` READY.
-- KEYS: the queue's keys (lib.lua); writes meta, scheduled, ids_scheduled, ready, seq.
-- ARGV[4]: at most this many tasks per call
-- Returns: {id...}: the promoted tasks.
-- Publishes: `ready <queue> <n>` once if n > 0 tasks were promoted; `changed <id>` per
--            watched task.

local now = clock()
local out = {}
local readies = 0
local watching = any_watched()
for _, id in ipairs(due(K_SCHEDULED, now, tonumber(ARGV[4]))) do
  local t = load(id)
  redis.call('ZREM', K_SCHEDULED, id)
  redis.call('ZREM', K_IDS_SCHEDULED, id) -- admin: the id index
  if t then
    t.update_time = now
    make_ready(t)
    save(t)
    publish_changed(id, watching)
    readies = readies + 1
    out[#out + 1] = id
  end
end
if readies > 0 then
  publish_ready(readies)
end
return out
