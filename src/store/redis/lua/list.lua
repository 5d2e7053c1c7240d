-- list: tasks of the queue in one state, in id (creation) order, after a
-- cursor; all read at one moment.
-- KEYS: the queue's keys (lib.lua); writes nothing.
-- ARGV[4]: the state (lib.lua's numbers)
-- ARGV[5]: list the ids after this one, or '' from the first
-- ARGV[6]: at most this many tasks
-- ARGV[7]: READY and LEASED: look at no more than this many of them
-- Returns: {meta_1, body_1, result_1, meta_2, ...}: the tasks' records (lib.lua).
--
-- SCHEDULED and the finished states have an index by id (score 0, so
-- ZRANGEBYLEX walks it in id order). READY and LEASED have none, to keep
-- enqueue and lease from writing one more index per task: their list and set
-- are read (the ready lists best first, the no-key group's then each key
-- group's in turn order; the leased set by deadline), at most
-- ARGV[7] ids, and those sorted. So a queue holding more READY (or LEASED)
-- tasks than that lists the ones delivered next (expiring first), in id
-- order. Ids are ULIDs of one length in [0-9A-Z], so Lua's comparison of
-- strings (strcoll, in Redis's locale) orders them as bytes, as
-- ZRANGEBYLEX does.

local state, after, limit, scan = tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7])
local ids
local index = k_ids(state)
if index then
  ids = redis.call('ZRANGEBYLEX', index, after == '' and '-' or '(' .. after, '+', 'LIMIT', 0, limit)
else
  local seen = {}
  if state == READY then
    for p = MAX_PRIORITY, 0, -1 do
      for _, list in ipairs(ready_lists(p, scan)) do
        if #seen < scan then
          for _, id in ipairs(redis.call('LRANGE', list, 0, scan - #seen - 1)) do
            seen[#seen + 1] = id
          end
        end
      end
    end
  elseif state == LEASED then
    seen = redis.call('ZRANGE', K_LEASED, 0, scan - 1)
  end
  local later = {}
  for _, id in ipairs(seen) do
    if after == '' or id > after then
      later[#later + 1] = id
    end
  end
  table.sort(later)
  ids = {}
  for i = 1, math.min(limit, #later) do
    ids[i] = later[i]
  end
end

local out = {}
if #ids == 0 then
  return out
end
local metas, bodies = hmget(K_META, ids), hmget(K_BODY, ids)
local results = {}
if state == SUCCEEDED then
  results = hmget(K_RESULTS, ids)
end
for i, raw in ipairs(metas) do
  if raw and struct.unpack('<B', raw) == state then
    out[#out + 1] = raw
    out[#out + 1] = bodies[i] or ''
    out[#out + 1] = results[i] or ''
  end
end
return out
