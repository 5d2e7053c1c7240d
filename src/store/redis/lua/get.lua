-- get: reads one task, all of its parts at one moment.
-- KEYS: the queue's keys (lib.lua); writes nothing.
-- ARGV[4]: task id
-- Returns: {'ok', meta, body, result} | {'not_found'}

local t, raw = load_raw(ARGV[4])
if not t then
  return {'not_found'}
end
return {'ok', record(t, raw)}
