-- resolve: settles dependency `dep`, which ended in `dep_state`, for task
-- `id` of this queue. Mirrors core::dependency::resolve: `dep` leaves the
-- task's pending list (so a replayed event changes nothing); a failed
-- dependency cancels the task under policy 'c' (and the task's own
-- dependents hear of it through the outbox); the last one done makes it
-- READY, or SCHEDULED until its due time.
-- KEYS: the queue's keys (lib.lua); writes meta, pending, ids_waiting, ready,
--       scheduled, finished, ids_canceled, outbox.
-- ARGV[4]: task id
-- ARGV[5]: dep id
-- ARGV[6]: dep's final state (lib.lua's numbers; 0: gone, seen as CANCELED)
-- ARGV[7]: the queue's retention of finished tasks (ms)
-- Returns: {changed (1/0), outbox (1 when events for other queues were
--          added)}.
-- Publishes: `ready <queue> 1` when the task became READY; `changed <id>`
--            if watched.

local now = clock()
local id, dep, dep_state = ARGV[4], ARGV[5], tonumber(ARGV[6])
local t = load(id)
if not t or t.state ~= WAITING then
  return {0, 0}
end
local found, rest = list_remove(K_PENDING, id, dep)
if not found then
  return {0, 0}
end
local policy = string.sub(redis.call('HGET', K_DEPS, id) or 'c', 1, 1)
local failed = dep_state == DEAD or dep_state == CANCELED or dep_state == 0
t.update_time = now
local events = 0
if failed and policy == 'c' then
  unindex(t)
  -- core::dependency::failure_error; the remaining pending stay listed.
  if #rest > 0 then
    redis.call('HSET', K_PENDING, id, table.concat(rest, ','))
  end
  t.last_error = 'dependency ' .. dep .. ' ended ' .. (dep_state == DEAD and 'DEAD' or 'CANCELED')
  make_final(t, CANCELED, tonumber(ARGV[7]))
  save(t)
  on_end(id, CANCELED)
  events = 1
elseif #rest == 0 then
  unindex(t)
  if t.scheduled_time > now then
    make_scheduled(t, t.scheduled_time)
    save(t)
  else
    make_ready(t)
    save(t)
    publish_ready(1)
  end
else
  save(t)
end
publish_changed(id, any_watched())
return {1, events}
