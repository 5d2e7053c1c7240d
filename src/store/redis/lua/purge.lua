-- purge: removes finished tasks whose retention ran out (purge time <= now),
-- with their request id and dedup key entries when those still point to them.
-- The finished list is in purge-time order, so this takes from its head and
-- stops at the first entry not yet due.
-- KEYS: the queue's keys (lib.lua); writes meta, body, results, finished, dedup, requests, watched,
--       the ids indexes, redriven, flow; totals (deleted with the queue's last task).
-- ARGV[4]: at most this many tasks per call
-- Returns: {id...}: the removed tasks.

local now = clock()
local out = {}
local taken = 0
local redriven = redis.call('EXISTS', K_REDRIVEN) == 1
for _, entry in ipairs(redis.call('LRANGE', K_FINISHED, 0, tonumber(ARGV[4]) - 1)) do
  local purge_at, id = string.match(entry, '^(%d+):(.+)$')
  if purge_at and tonumber(purge_at) > now then
    break
  end
  taken = taken + 1
  local t = id and load(id)
  -- admin: an entry made stale by a redrive (redrive.lua) comes before the
  -- task's live one, if any: skip it, and the task while it is not final.
  if t and redriven and stale(id) then
    t = nil
  end
  -- A task that unfinished tasks depend on is kept for them (release.lua
  -- removes it once the last one finished).
  if t and is_final(t.state) and redis.call('HEXISTS', K_READERS, id) == 1 then
    redis.call('HSET', K_HELD, id, 1)
  elseif t and is_final(t.state) then
    redis.call('ZREM', k_ids(t.state), id)
    remove(t)
    out[#out + 1] = id
  end
end
if taken > 0 then
  redis.call('LTRIM', K_FINISHED, taken, -1)
end
-- admin: a queue without tasks is forgotten, its totals with it (as the table
-- forgets it).
if taken > 0 and redis.call('EXISTS', K_META) == 0 then
  forget_queue()
end
return out
