-- throttle: how long until the queue's next delivery may go, when only its
-- rate limit holds it back (core::flow::Bucket::next_token).
-- KEYS: the queue's keys (lib.lua); reads ready, turn, flow; writes nothing.
-- ARGV[4]: the rate limit in tokens per ms
-- ARGV[5]: the rate limit's burst
-- Returns: milliseconds until the bucket has a token, or -1 when tasks are
--          not held back by it (no READY task, or a token is there).

local now = clock()
local waiting = false
for p = 0, MAX_PRIORITY do
  if redis.call('LLEN', k_ready(p)) > 0 or redis.call('ZCARD', k_turn(p)) > 0 then
    waiting = true
    break
  end
end
if not waiting then
  return -1
end
local per_ms = tonumber(ARGV[4])
local tokens, at = bucket_tokens(now, per_ms, tonumber(ARGV[5]))
local missing = 1 - tokens - 1e-9
if missing <= 0 then
  return -1
end
return math.max(at - now, 0) + math.ceil(missing / per_ms)
