-- expire: cancels the queue's undelivered tasks whose deadline passed
-- (expire_due in lib.lua, core::dependency::expired); what waits on them
-- hears of it through the outbox (workflow.rs).
-- KEYS: the queue's keys (lib.lua); writes meta, expiring, the index of each
--       task's state, finished, ids_canceled, outbox.
-- ARGV[4]: the queue's retention of finished tasks (ms)
-- ARGV[5]: at most this many tasks per call
-- Returns: {id...}: the tasks canceled as expired.

return expire_due(clock(), tonumber(ARGV[4]), tonumber(ARGV[5]))
