-- purge: removes finished tasks whose retention ran out (purge time <= now),
-- with their request id and dedup key entries when those still point to them.
-- The finished list is in purge-time order, so this takes from its head and
-- stops at the first entry not yet due.
-- KEYS: the queue's keys (lib.lua); writes meta, body, results, finished, dedup, requests, watched,
--       flow.
-- ARGV[4]: at most this many tasks per call
-- Returns: {id...}: the removed tasks.

local now = clock()
local out = {}
local taken = 0
for _, entry in ipairs(redis.call('LRANGE', K_FINISHED, 0, tonumber(ARGV[4]) - 1)) do
  local purge_at, id = string.match(entry, '^(%d+):(.+)$')
  if purge_at and tonumber(purge_at) > now then
    break
  end
  taken = taken + 1
  local t = id and load(id)
  if t then
    redis.call('HDEL', K_META, id)
    redis.call('HDEL', K_BODY, id)
    redis.call('HDEL', K_RESULTS, id)
    redis.call('HDEL', K_WATCHED, id)
    redis.call('HDEL', K_FLOW, 't:' .. id, 's:' .. id)
    if t.request_id ~= '' and redis.call('HGET', K_REQUESTS, t.request_id) == id then
      redis.call('HDEL', K_REQUESTS, t.request_id)
    end
    if t.dedup_key ~= '' and redis.call('HGET', K_DEDUP, t.dedup_key) == id then
      redis.call('HDEL', K_DEDUP, t.dedup_key)
    end
    out[#out + 1] = id
  end
end
if taken > 0 then
  redis.call('LTRIM', K_FINISHED, taken, -1)
end
return out
