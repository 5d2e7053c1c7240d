-- get: reads one task, all of its parts at one moment.
-- KEYS: the queue's keys (lib.lua); writes nothing.
-- ARGV[4]: task id
-- Returns: {'ok', meta, body, result, pending} | {'not_found'}: pending is
--          the task's dependencies not yet ended, comma-separated ('' none).

local t, raw = load_raw(ARGV[4])
if not t then
  return {'not_found'}
end
local meta, body, result = record(t, raw)
return {'ok', meta, body, result, redis.call('HGET', K_PENDING, t.id) or ''}
