-- stats: a queue's numbers, read at one moment (admin.rs).
-- KEYS: the queue's keys (lib.lua); writes nothing.
-- Returns: {scheduled, ready, leased, succeeded, dead, canceled, waiting, oldest ready
--          time ('' when nothing is READY), paused (1 or 0), enqueued,
--          delivered, acked, nacked, dead, expired}: the counts by state in
--          core::stats::STATES order, then the totals in QueueTotals order.

-- The READY task waiting longest is the head of one of the ready lists
-- (each is FIFO): the earliest update_time (when it became READY) of those.
-- A keyed queue has a list per key group: this reads each (O(groups)).
local ready, heads = 0, {}
for p = 0, MAX_PRIORITY do
  for _, list in ipairs(ready_lists(p)) do
    local n = redis.call('LLEN', list)
    if n > 0 then
      ready = ready + n
      heads[#heads + 1] = redis.call('LINDEX', list, 0)
    end
  end
end
local oldest = nil
if #heads > 0 then
  for _, raw in ipairs(hmget(K_META, heads)) do
    if raw then
      local became = select(6, unpack_head(raw))
      if not oldest or became < oldest then
        oldest = became
      end
    end
  end
end

local out = {
  redis.call('ZCARD', K_SCHEDULED), ready, redis.call('ZCARD', K_LEASED), redis.call('ZCARD', K_IDS_SUCCEEDED),
  redis.call('ZCARD', K_IDS_DEAD), redis.call('ZCARD', K_IDS_CANCELED), redis.call('ZCARD', K_IDS_WAITING), oldest and fmt(oldest) or '',
  redis.call('EXISTS', K_PAUSED),
}
for _, n in ipairs(redis.call('HMGET', K_TOTALS, 'enqueued', 'delivered', 'acked', 'nacked', 'dead', 'expired')) do
  out[#out + 1] = tonumber(n) or 0
end
return out
