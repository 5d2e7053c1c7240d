-- lease: delivers up to N READY tasks of one queue, best first, each with a
-- new lease id.
-- KEYS: the queue's keys (lib.lua); writes meta, ready, leased, lease.
-- ARGV[4]: how many tasks to take at most
-- ARGV[5]: lease duration (ms)
-- ARGV[6]: worker id
-- ARGV[7]: tasks already in the response (taken from other queues)
-- ARGV[8]: payload bytes already in the response
-- ARGV[9]: payload budget of the response (bytes); a task that would go over
--          it is left READY, unless the response would otherwise be empty
-- Returns: {bytes, full, meta_1, body_1, result_1, meta_2, ...}: payload bytes
--          in the response now, 1 if a task was left for lack of budget (else
--          0), then each leased task's record (lib.lua).
-- Publishes: `changed <id>` per leased task that is watched.

local now = clock()
local want = tonumber(ARGV[4])
local duration = tonumber(ARGV[5])
local worker = ARGV[6]
local have = tonumber(ARGV[7])
local bytes = tonumber(ARGV[8])
local budget = tonumber(ARGV[9])

local out = {0, 0}
if want < 1 then
  out[1] = bytes
  return out
end
local ids = redis.call('ZRANGE', K_READY, 0, want - 1)
if #ids == 0 then
  out[1] = bytes
  return out
end

-- The tasks that fit, in order; an index entry without its record cannot
-- happen through these scripts, but is dropped rather than block the queue.
local taken, gone = {}, {}
for i, raw in ipairs(hmget(K_META, ids)) do
  if not raw then
    gone[#gone + 1] = ids[i]
  else
    local t = decode(ids[i], raw)
    if have + #taken > 0 and bytes + t.size > budget then
      out[2] = 1
      break
    end
    bytes = bytes + t.size
    taken[#taken + 1] = t
  end
end
out[1] = bytes
-- Out of the ready set first (see lib.lua: this keeps leasing working when
-- Redis is full).
local taken_ids = {}
for i, t in ipairs(taken) do
  taken_ids[i] = t.id
end
for _, id in ipairs(gone) do
  taken_ids[#taken_ids + 1] = id
end
if #taken_ids > 0 then
  variadic('ZREM', K_READY, taken_ids)
end
if #taken == 0 then
  return out
end

local n = #taken
for i = #taken_ids, n + 1, -1 do
  taken_ids[i] = nil
end
local first = redis.call('INCRBY', K_LEASE, n) - n
local leased, metas = {}, {}
local deadline = now + duration
local watching = any_watched()
for i, t in ipairs(taken) do
  t.state = LEASED
  t.attempt = t.attempt + 1
  t.lease_id = first + i
  t.lease_expire = deadline
  t.lease_worker = worker
  t.update_time = now
  t.meta = encode(t)
  leased[#leased + 1] = deadline
  leased[#leased + 1] = t.id
  metas[#metas + 1] = t.id
  metas[#metas + 1] = t.meta
  publish_changed(t.id, watching)
end
variadic('ZADD', K_LEASED, leased)
variadic('HSET', K_META, metas)
for i, body in ipairs(hmget(K_BODY, taken_ids)) do
  out[#out + 1] = taken[i].meta
  out[#out + 1] = body or ''
  out[#out + 1] = ''
end
return out
