-- lease: delivers up to N READY tasks of one queue, best first, each with a
-- new lease id.
-- KEYS: the queue's keys (lib.lua); writes tasks, ready, leased, lease.
-- ARGV[3]: how many tasks to take at most
-- ARGV[4]: lease duration (ms)
-- ARGV[5]: worker id
-- ARGV[6]: tasks already in the response (taken from other queues)
-- ARGV[7]: payload bytes already in the response
-- ARGV[8]: payload budget of the response (bytes); a task that would go over
--          it is left READY, unless the response would otherwise be empty
-- Returns: {bytes, full, record...}: payload bytes in the response now, 1 if a
--          task was left for lack of budget (else 0), the leased records.
-- Publishes: `changed <id>` per leased task that is watched.

local now = clock()
local want = tonumber(ARGV[3])
local duration = tonumber(ARGV[4])
local worker = ARGV[5]
local have = tonumber(ARGV[6])
local bytes = tonumber(ARGV[7])
local budget = tonumber(ARGV[8])

local out = {0, 0}
if want < 1 then
  out[1] = bytes
  return out
end
local taken = 0
local watching = any_watched()
for _, id in ipairs(redis.call('ZRANGE', K_READY, 0, want - 1)) do
  local t = load(id)
  if not t then
    -- An index entry without its record cannot happen through these scripts;
    -- drop it rather than block the queue.
    redis.call('ZREM', K_READY, id)
  else
    local size = #t.payload
    if have + taken > 0 and bytes + size > budget then
      out[2] = 1
      break
    end
    bytes = bytes + size
    taken = taken + 1
    redis.call('ZREM', K_READY, id)
    t.state = 'LEASED'
    t.attempt = t.attempt + 1
    t.lease_id = redis.call('INCR', K_LEASE)
    t.lease_expire = now + duration
    t.lease_worker = worker
    t.update_time = now
    redis.call('ZADD', K_LEASED, fmt(t.lease_expire), id)
    out[#out + 1] = save(t)
    publish_changed(id, watching)
  end
end
out[1] = bytes
return out
