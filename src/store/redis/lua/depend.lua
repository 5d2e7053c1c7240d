-- depend: registers task `reader` (of queue `reader_queue`) as depending on
-- task `dep` of this queue: it reads `dep` (kept past retention while it
-- does) and, while `dep` has not ended, waits on it (an `end` event reaches
-- it when `dep` ends). Idempotent: a replayed registration adds nothing.
-- KEYS: the queue's keys (lib.lua); writes readers, dependents.
-- ARGV[4]: dep id
-- ARGV[5]: reader queue
-- ARGV[6]: reader id
-- Returns: dep's state (lib.lua's numbers; final ones mean the caller
--          settles the reader now), or 0 when dep is gone (unknown or purged:
--          the reader sees it as CANCELED).

local dep, reader_queue, reader = ARGV[4], ARGV[5], ARGV[6]
local t = load(dep)
if not t then
  return 0
end
list_add(K_READERS, dep, reader)
if not is_final(t.state) then
  list_add(K_DEPENDENTS, dep, reader_queue .. ' ' .. reader)
end
return t.state
