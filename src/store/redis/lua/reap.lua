-- reap: returns tasks whose lease ran out (deadline <= now) to READY, or to
-- DEAD when that was their last attempt. Safe to run from several replicas at
-- once: a task is reaped by exactly one call.
-- Mirrors core::transition::on_expiry and expiry_error.
-- KEYS: the queue's keys (lib.lua); writes meta, leased, ready, finished, seq,
--       totals, ids_dead.
-- ARGV[4]: the queue's retention of finished tasks (ms)
-- ARGV[5]: at most this many tasks per call
-- Returns: {id_1, lease_id_1, ready_1, id_2, ...}: each reaped task, the lease
--          that ran out and 1 if the task is READY again (0: DEAD).
-- Publishes: `lost <id> <lease id> 0` per task; `ready <queue> <n>` once if n > 0
--            tasks became READY; `changed <id>` per watched task; `freed` once
--            if a reaped task held semaphore permits (they lapsed with it).

local now = clock()
local retention = tonumber(ARGV[4])
local out = {}
local readies = 0
local watching = any_watched()
local semaphores = needs_semaphores()
local freed = false
for _, id in ipairs(due(K_LEASED, now, tonumber(ARGV[5]))) do
  local t = load(id)
  redis.call('ZREM', K_LEASED, id)
  if t then
    release_keys({id})
    if semaphores and redis.call('HEXISTS', K_FLOW, 's:' .. id) == 1 then
      freed = true
    end
    local lease_id = t.lease_id
    clear_lease(t)
    t.update_time = now
    local again = 0
    count('expired', 1) -- admin: the queue's totals
    if t.attempt < t.max_attempts then
      make_ready(t)
      readies = readies + 1
      again = 1
    else
      t.last_error = string.format('lease expired on the last attempt (%d of %d)', t.attempt, t.max_attempts)
      make_final(t, DEAD, retention)
      count('dead', 1) -- admin: the queue's totals
      if in_workflow() then
        on_end(id, DEAD)
      end
    end
    save(t)
    publish_lost(id, lease_id, false)
    publish_changed(id, watching)
    out[#out + 1] = id
    out[#out + 1] = fmt(lease_id)
    out[#out + 1] = again
  end
end
if readies > 0 then
  publish_ready(readies)
end
if freed then
  redis.call('PUBLISH', CHANNEL, 'freed')
end
return out
