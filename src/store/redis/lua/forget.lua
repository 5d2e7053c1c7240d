-- forget: deletes every key of a queue that holds no task, its counters
-- included, so a forgotten queue leaves nothing behind (queues.rs has taken
-- it out of tb:queues already, and puts it back when this answers 0).
-- KEYS: the queue's keys (lib.lua); deletes all of them.
-- Returns: 1 when the queue held no task and its keys are gone, 0 when it
--          holds a task (nothing written).

if redis.call('EXISTS', K_META) == 1 then
  return 0
end
redis.call('DEL', unpack(KEYS))
return 1
