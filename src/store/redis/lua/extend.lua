-- extend: moves a live lease's deadline to now + by.
-- KEYS: the queue's keys (lib.lua); writes meta, leased.
-- ARGV[4]: task id
-- ARGV[5]: lease id presented by the worker
-- ARGV[6]: by (ms)
-- Returns: {'ok', new deadline, semaphore names (comma-separated, '' for none:
--          the caller moves their holders' lapse too)} | {'not_found'} |
--          {'mismatch'} | {'canceled'}

local now = clock()
local t, err = load_held(ARGV[4], tonumber(ARGV[5]), now)
if not t then
  return {err}
end

-- Out of the index first (see lib.lua: this keeps extend working when full).
unindex(t)
t.lease_expire = now + tonumber(ARGV[6])
t.update_time = now
redis.call('ZADD', K_LEASED, t.lease_expire, t.id)
save(t)
return {'ok', fmt(t.lease_expire), redis.call('HGET', K_FLOW, 's:' .. t.id) or ''}
