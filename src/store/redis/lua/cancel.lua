-- cancel: cancels a WAITING, SCHEDULED, READY or LEASED task (what waits on
-- it hears of it through the outbox: workflow.rs); a LEASED one keeps its
-- lease id, so its holder's next settling call learns it was canceled.
-- Mirrors core::transition::on_cancel.
-- KEYS: the queue's keys (lib.lua); writes meta and the index of its state, finished,
--       ids_canceled.
-- ARGV[4]: task id
-- ARGV[5]: the queue's retention of finished tasks (ms)
-- Returns: {'ok', meta, body, result} (also for a task already CANCELED) | {'not_found'}
--          | {'finished'} (SUCCEEDED or DEAD)
-- Publishes: `lost <id> <lease id> 1` when the task was LEASED; `changed <id>`
--            if the task is watched.

local now = clock()
local t, raw = load_raw(ARGV[4])
if not t then
  return {'not_found'}
end
if t.state == CANCELED then
  return {'ok', record(t, raw)}
end
if is_final(t.state) then
  return {'finished'}
end

local was_leased = t.state == LEASED
unindex(t)
if was_leased then
  release_keys({t.id})
end
t.update_time = now
make_final(t, CANCELED, tonumber(ARGV[5]))
raw = save(t)
if in_workflow() then
  on_end(t.id, CANCELED)
end
publish_changed(t.id, any_watched())
if was_leased then
  publish_lost(t.id, t.lease_id, true)
end
return {'ok', record(t, raw)}
