-- purge: removes finished tasks whose retention ran out (purge time <= now),
-- with their request id and dedup key entries when those still point to them.
-- KEYS: the queue's keys (lib.lua); writes meta, body, results, finished, dedup, requests, watched.
-- ARGV[4]: at most this many tasks per call
-- Returns: {id...}: the removed tasks.

local now = clock()
local out = {}
for _, id in ipairs(due(K_FINISHED, now, tonumber(ARGV[4]))) do
  local t = load(id)
  redis.call('ZREM', K_FINISHED, id)
  if t then
    redis.call('HDEL', K_META, id)
    redis.call('HDEL', K_BODY, id)
    redis.call('HDEL', K_RESULTS, id)
    redis.call('HDEL', K_WATCHED, id)
    if t.request_id ~= '' and redis.call('HGET', K_REQUESTS, t.request_id) == id then
      redis.call('HDEL', K_REQUESTS, t.request_id)
    end
    if t.dedup_key ~= '' and redis.call('HGET', K_DEDUP, t.dedup_key) == id then
      redis.call('HDEL', K_DEDUP, t.dedup_key)
    end
  end
  out[#out + 1] = id
end
return out
