-- ack: marks a leased task SUCCEEDED.
-- KEYS: the queue's keys (lib.lua); writes tasks, leased, finished.
-- ARGV[3]: task id
-- ARGV[4]: lease id presented by the worker
-- ARGV[5]: result bytes
-- ARGV[6]: the queue's retention of finished tasks (ms)
-- Returns: {'ok', record} | {'not_found'} | {'mismatch'} | {'canceled'}

local now = clock()
local t = load(ARGV[3])
if not t then
  return {'not_found'}
end
local err = lease_error(t, tonumber(ARGV[4]), now)
if err then
  return {err}
end

unindex(t)
t.result = ARGV[5]
clear_lease(t)
t.update_time = now
make_final(t, 'SUCCEEDED', tonumber(ARGV[6]))
return {'ok', save(t)}
