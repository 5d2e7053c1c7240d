-- release: task `reader` finished and no longer reads task `dep` of this
-- queue; when nothing reads `dep` any more and its retention already ran out
-- (`held`), it is removed now. Idempotent.
-- KEYS: the queue's keys (lib.lua); writes readers, held, and on removal
--       what purge.lua writes.
-- ARGV[4]: dep id
-- ARGV[5]: reader id
-- Returns: 1 when `dep` was removed, else 0.

local dep, reader = ARGV[4], ARGV[5]
local _, rest = list_remove(K_READERS, dep, reader)
if #rest > 0 or redis.call('HDEL', K_HELD, dep) == 0 then
  return 0
end
local t = load(dep)
if not t then
  return 0
end
redis.call('ZREM', k_ids(t.state), dep)
remove(t)
if redis.call('EXISTS', K_META) == 0 then
  forget_queue()
end
return 1
