-- fire: records a schedule's due time as fired and enqueues its task, in
-- one step (core::schedule; the table's Table::fire_schedule is the
-- reference). scripts.rs builds this script as lib.lua, then enqueue.lua
-- wrapped as the function enqueue_main(), then this file.
-- KEYS: the queue's keys (lib.lua), then
--   KEYS[#KEYS] fired  HASH (the last key)  schedule name -> the last due time fired (ms); in
--                         the queue's slot, and not among the keys
--                         forget.lua deletes, so it outlives the tasks
-- ARGV[4..]: as enqueue.lua (dedup window, registered, then the ten
--            arguments of one task, or none for a skipped run), followed by
-- ARGV[#ARGV - 1]: the schedule's name
-- ARGV[#ARGV]: the due time (ms)
-- Returns: {'already'} when this due time or a later one was fired
--          (nothing written); {'skipped'} when no task was given (the due
--          time is recorded); otherwise enqueue.lua's reply, the due time
--          recorded only when it wrote ('ok' or 'first').

local K_FIRED = KEYS[#KEYS]
local due = table.remove(ARGV)
local name = table.remove(ARGV)
local last = redis.call('HGET', K_FIRED, name)
if last and tonumber(last) >= tonumber(due) then
  return {'already'}
end
if #ARGV < 6 then
  redis.call('HSET', K_FIRED, name, due)
  return {'skipped'}
end
local out = enqueue_main()
if out[1] == 'ok' or out[1] == 'first' then
  redis.call('HSET', K_FIRED, name, due)
end
return out
