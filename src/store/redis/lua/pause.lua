-- pause: pauses or resumes delivery from the queue. While `paused` exists
-- lease.lua takes nothing from it; enqueues and settling go on.
-- KEYS: the queue's keys (lib.lua); writes paused.
-- ARGV[4]: '1' to pause, '0' to resume
-- Returns: 1 when that changed anything, else 0.
-- Publishes: `ready <queue> <n>` on a resume when n > 0 tasks are READY, so
--            waiting workers on every replica look again at once.

if ARGV[4] == '1' then
  return redis.call('SET', K_PAUSED, '1', 'NX') and 1 or 0
end
if redis.call('DEL', K_PAUSED) == 0 then
  return 0
end
local ready = 0
for p = 0, MAX_PRIORITY do
  for _, list in ipairs(ready_lists(p)) do
    ready = ready + redis.call('LLEN', list)
  end
end
if ready > 0 then
  publish_ready(ready)
end
return 1
