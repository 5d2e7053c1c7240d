-- watch: counts WatchTask calls on a task, so the scripts announce its
-- changes (`changed <id>`) while at least one replica watches it.
-- KEYS: the queue's keys (lib.lua); writes watched.
-- ARGV[4]: task id
-- ARGV[5]: 1 for a new watch, -1 for one that ended
-- Returns: the number of watches left.

local id = ARGV[4]
local n = redis.call('HINCRBY', K_WATCHED, id, tonumber(ARGV[5]))
if n <= 0 then
  redis.call('HDEL', K_WATCHED, id)
  return 0
end
return n
