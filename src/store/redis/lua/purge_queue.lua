-- purge_queue: removes the queue's tasks in the given states, with their
-- request id and dedup key entries when those still point to them (as
-- purge.lua does). LEASED tasks are never removed (a worker holds them).
-- KEYS: the queue's keys (lib.lua); writes meta, body, results, watched,
--       dedup, requests, redriven, ready (and the key groups' lists), turn,
--       scheduled, the ids indexes;
--       finished and totals when nothing is left of them.
-- ARGV[4]: at most this many tasks per call (the caller calls again while
--          the reply says more)
-- ARGV[5..]: the states (lib.lua's numbers); LEASED is ignored
-- Returns: {removed, more}: how many tasks were removed, and 1 when the
--          limit stopped this call (else 0).
--
-- Entries of removed finished tasks stay in the finished list until their
-- purge time (purge.lua skips a task it cannot find), unless no finished
-- task is left: then the list goes. A queue left without tasks is forgotten
-- like purge.lua forgets it.

local limit = tonumber(ARGV[4])
local taken, removed = 0, 0

-- Removes the tasks `ids` (taken out of their index by the caller).
local function drop(ids)
  taken = taken + #ids
  if #ids == 0 then
    return
  end
  for i, raw in ipairs(hmget(K_META, ids)) do
    if raw then
      local t = decode(ids[i], raw)
      if not is_final(t.state) then
        -- What waits on it sees it CANCELED (workflow.rs).
        on_end(t.id, CANCELED)
      end
      remove(t)
      removed = removed + 1
    end
  end
end

for i = 5, #ARGV do
  local state = tonumber(ARGV[i])
  if state == READY then
    for p = MAX_PRIORITY, 0, -1 do
      for _, list in ipairs(taken < limit and ready_lists(p, limit) or {}) do
        if taken < limit then
          local ids = redis.call('LRANGE', list, 0, limit - taken - 1)
          if #ids > 0 then
            redis.call('LTRIM', list, #ids, -1)
          end
          drop(ids)
        end
      end
      -- Emptied groups leave the turn.
      if keyed() then
        local gone = {}
        for _, key in ipairs(redis.call('ZRANGE', k_turn(p), 0, limit - 1)) do
          if redis.call('EXISTS', k_group(p, key)) == 0 then
            gone[#gone + 1] = key
          end
        end
        if #gone > 0 then
          variadic('ZREM', k_turn(p), gone)
        end
      end
    end
  elseif k_ids(state) and taken < limit then
    -- SCHEDULED from the set by due time, which holds every one (tasks
    -- scheduled before the id index existed too).
    local index = state == SCHEDULED and K_SCHEDULED or k_ids(state)
    local ids = redis.call('ZRANGE', index, 0, limit - taken - 1)
    if #ids > 0 then
      variadic('ZREM', index, ids)
      if state == SCHEDULED then
        variadic('ZREM', K_IDS_SCHEDULED, ids)
      end
    end
    drop(ids)
  end
end

if redis.call('EXISTS', K_META) == 0 then
  forget_queue()
elseif redis.call('EXISTS', K_IDS_SUCCEEDED) + redis.call('EXISTS', K_IDS_DEAD) + redis.call('EXISTS', K_IDS_CANCELED) == 0 then
  redis.call('DEL', K_FINISHED, K_REDRIVEN)
end
return {removed, taken >= limit and 1 or 0}
