-- semaphore_take: takes permits of one shared semaphore, for as many of the
-- given holders as it has room for. Standalone (no lib.lua): a semaphore's
-- holders live in the semaphore's own key (its own Redis Cluster slot),
-- shared by every queue whose tasks need it.
-- KEYS[1]: the semaphore's holders (keys.rs): ZSET member -> the time the
--          permit lapses (a lease's deadline, or a reservation's end).
--          Holders past it do not count and are removed here, so a permit
--          whose release was lost (a broker crash) comes back by itself.
-- ARGV[1]: now in ms, or '' to use Redis's clock (TIME)
-- ARGV[2]: the semaphore's limit
-- ARGV[3..]: pairs: holder (member), lapse time (ms)
-- Returns: how many holders, in order, got a permit (the rest got none).

local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
else
  now = tonumber(ARGV[1])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local free = tonumber(ARGV[2]) - redis.call('ZCARD', KEYS[1])
local n = 0
for i = 3, #ARGV, 2 do
  if free <= 0 then
    break
  end
  redis.call('ZADD', KEYS[1], ARGV[i + 1], ARGV[i])
  free = free - 1
  n = n + 1
end
return n
