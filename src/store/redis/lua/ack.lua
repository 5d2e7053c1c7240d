-- ack: marks leased tasks SUCCEEDED, each alone: one item's refusal changes
-- nothing of it and does not stop the others (a batch acts like one ack per
-- item, in order).
-- KEYS: the queue's keys (lib.lua); writes tasks, leased, finished.
-- ARGV[3]: the queue's retention of finished tasks (ms)
-- ARGV[4..]: one triple per item: task id, lease id presented by the worker,
--            result bytes
-- Returns: {status_1, record_1, status_2, record_2, ...} in argument order:
--          status 'ok' with the new record, or 'not_found' | 'mismatch' |
--          'canceled' with ''.
-- Publishes: `changed <id>` per acked task that is watched.

local now = clock()
local retention = tonumber(ARGV[3])
local watching = any_watched()
local out = {}
for i = 4, #ARGV, 3 do
  local t, err = load_held(ARGV[i], tonumber(ARGV[i + 1]), now)
  if not t then
    out[#out + 1] = err
    out[#out + 1] = ''
  else
    unindex(t)
    t.result = ARGV[i + 2]
    clear_lease(t)
    t.update_time = now
    make_final(t, 'SUCCEEDED', retention)
    out[#out + 1] = 'ok'
    out[#out + 1] = save(t)
    publish_changed(t.id, watching)
  end
end
return out
