-- lease: delivers up to N READY tasks of one queue, best first, each with a
-- new lease id.
-- KEYS: the queue's keys (lib.lua); writes meta, ready (and the key groups'
--       lists), turn, seq, leased, lease, totals; takes nothing while
--       `paused` exists.
-- Order: priority first; within a level of a queue without keys, FIFO; of a
--        keyed queue, the concurrency-key groups round-robin (the turn,
--        lib.lua), FIFO within a group.
-- ARGV[4]: how many tasks to take at most
-- ARGV[5]: lease duration (ms)
-- ARGV[6]: worker id
-- ARGV[7]: tasks already in the response (taken from other queues)
-- ARGV[8]: bytes already in the response
-- ARGV[9]: byte budget of the response; a task that would go over it is left
--          READY, unless the response would otherwise be empty. A task counts
--          its meta `size` (core::budget::task_bytes, set at enqueue), plus
--          its last error and ARGV[10] if it has one (core::budget::lease_bytes;
--          only a task delivered before has one)
-- ARGV[10]: core::budget::FIELD (a field's framing)
-- ARGV[11]: a random number in [0, 2^21) drawn by the caller for this call
-- ARGV[12]: the queue's max_in_flight (0: unlimited): LEASED tasks, counted
--           as the leased set's size, so every way out of LEASED frees the
--           permit and nothing can leak it (core::flow::room)
-- ARGV[13]: the queue's rate limit in tokens per ms, or '' for none
-- ARGV[14]: the rate limit's burst (core::flow::Bucket; the bucket is K_FLOW)
-- ARGV[15]: the queue's per_key_max_in_flight (0: unlimited): a task whose
--           concurrency key holds that many LEASED tasks is passed over (left
--           READY in place) for the next one (its whole group, when keyed);
--           at most SKIP_SCAN tasks or groups are passed over per priority
--           level and call
-- ARGV[16]: permits the caller holds for this call, per semaphore:
--           'name=n,name=n' ('' for none). A task needing a semaphore without
--           one left is passed over like a saturated key, and its semaphores
--           are named in the reply so the caller can take permits and call
--           again (semaphores live in their own slots: see mod.rs)
-- ARGV[18]: the queue's retention of finished tasks (ms), for tasks it
--          cancels as expired
-- ARGV[17]: '1' to stop at the first task needing a semaphore without a
--           permit instead of passing it over (the caller's first call, so
--           its second, with permits, goes on in order: tasks needing
--           semaphores do not wait behind a stream of tasks that need none)
-- Returns: {bytes, full, blocked, events, meta_1, body_1, result_1, meta_2, ...}:
--          bytes in the response now, 1 if a task was left for lack of budget
--          (else 0), the semaphores a passed-over task needed (comma-separated,
--          '' for none), 1 if tasks it canceled as expired left events in the
--          outbox (else 0), then each leased task's record (lib.lua).
-- Publishes: `changed <id>` per leased task that is watched.

local now = clock()
local want = tonumber(ARGV[4])
local duration = tonumber(ARGV[5])
local worker = ARGV[6]
local have = tonumber(ARGV[7])
local bytes = tonumber(ARGV[8])
local budget = tonumber(ARGV[9])
local field = tonumber(ARGV[10])

-- Deadlines are checked at lease time: what expired is canceled, not
-- delivered (core::dependency::expired).
-- `events`: 1 when that put events in the outbox (for the caller to deliver).
local events = 0
if redis.call('EXISTS', K_EXPIRING) == 1 then
  local outbox_before = redis.call('LLEN', K_OUTBOX)
  expire_due(now, tonumber(ARGV[18]), 1000)
  events = redis.call('LLEN', K_OUTBOX) > outbox_before and 1 or 0
end

-- admin: a paused queue delivers nothing (admin.rs, pause.lua).
if redis.call('EXISTS', K_PAUSED) == 1 then
  return {bytes, 0, '', events}
end

-- Flow control: fewer tasks (never an error) while a limit binds.
local max_in_flight = tonumber(ARGV[12])
if max_in_flight > 0 then
  want = math.min(want, max_in_flight - redis.call('ZCARD', K_LEASED))
end
local per_ms, burst, tokens, tokens_at = tonumber(ARGV[13]), tonumber(ARGV[14]), nil, nil
if per_ms then
  tokens, tokens_at = bucket_tokens(now, per_ms, burst)
  want = math.min(want, math.floor(tokens + 1e-9))
end
if want <= 0 then
  return {bytes, 0, '', events}
end

local per_key = tonumber(ARGV[15])
local counting = keyed()
local by_key = counting and per_key > 0
local by_semaphore = needs_semaphores()
local probe = ARGV[17] == '1'
local stopped = false
local skipping = by_key or by_semaphore
local SKIP_SCAN = 256
-- Permits held for this call per semaphore, and what passed-over tasks needed.
local rooms, blocked = {}, {}
for name, n in string.gmatch(ARGV[16], '([^,=]+)=(%d+)') do
  rooms[name] = tonumber(n)
end
-- Whether every semaphore of `sems` ('a,b' or false) has a permit left.
local function sems_free(sems)
  if not sems then
    return true
  end
  local ok = true
  for name in string.gmatch(sems, '[^,]+') do
    if (rooms[name] or 0) <= 0 then
      blocked[name] = true
      ok = false
    end
  end
  return ok
end
local function sems_take(sems)
  if sems then
    for name in string.gmatch(sems, '[^,]+') do
      rooms[name] = rooms[name] - 1
    end
  end
end
-- LEASED tasks per key so far (read once per key, counted up as we take).
local held = {}
local function room_for(key)
  if not key then
    return true
  end
  if held[key] == nil then
    held[key] = tonumber(redis.call('HGET', K_FLOW, 'k:' .. key) or '0')
  end
  return held[key] < per_key
end

local out = {0, 0, '', events}
-- The leased tasks' ids and their meta records (to be rewritten).
local ids, raws = {}, {}
local full = false

-- The semaphores of each of `listed` (false for none; {} when none needs any).
local function task_sems(listed)
  if not by_semaphore then
    return {}
  end
  local fields = {}
  for i, id in ipairs(listed) do
    fields[i] = 's:' .. id
  end
  return hmget(K_FLOW, fields)
end

-- Decides on the READY task `id` (meta `raw`, concurrency key `key` when
-- counted, semaphores `sems`): 'take' (added to the lease), 'pass' (left
-- READY in place: its key or a semaphore has no room), 'drop' (no record, or
-- not READY: cannot happen through these scripts, but a replica of layout 2
-- still running during an upgrade cancels a keyed task without finding it
-- in its key's list; dropped rather than delivered or left to block the
-- queue), or 'stop' (probing) and 'full' (the byte budget), which end the call.
local function consider(id, raw, key, sems)
  if not raw or string.byte(raw, 1) ~= READY then
    return 'drop'
  end
  local key_room = not by_key or room_for(key)
  if probe and by_semaphore and key_room and not sems_free(sems) then
    stopped = true
    return 'stop'
  end
  if not key_room or (by_semaphore and not sems_free(sems)) then
    return 'pass'
  end
  local attempt, size = struct.unpack('<I4I4', raw, 2)
  if attempt > 0 then
    -- The last error's length: TAIL's sixth field, 29 bytes in.
    local tail = select(8, unpack_head(raw))
    local err = struct.unpack('<I4', raw, tail + 29)
    if err > 0 then
      size = size + err + field
    end
  end
  if have + #ids > 0 and bytes + size > budget then
    full = true
    return 'full'
  end
  bytes = bytes + size
  ids[#ids + 1] = id
  raws[#raws + 1] = raw
  if by_key and key then
    held[key] = held[key] + 1
  end
  if by_semaphore then
    sems_take(sems)
  end
  return 'take'
end

-- A queue without keys: one FIFO list per priority.
local function lease_fifo(p)
  local key = k_ready(p)
  local listed = redis.call('LRANGE', key, 0, want - #ids - 1 + (skipping and SKIP_SCAN or 0))
  if #listed == 0 then
    return
  end
  -- How many of the list's first entries leave it (taken or dropped); once
  -- a task was passed over, the entries taken after it (`later`) leave one
  -- by one.
  local consumed, passed, later = 0, false, {}
  local keys = by_key and task_keys(listed) or {}
  local sems = task_sems(listed)
  for i, raw in ipairs(hmget(K_META, listed)) do
    if #ids >= want then
      break
    end
    local what = consider(listed[i], raw, keys[i], sems[i])
    if what == 'stop' or what == 'full' then
      break
    elseif what == 'pass' then
      passed = true
    elseif passed then
      later[#later + 1] = listed[i]
    else
      consumed = i
    end
  end
  -- Out of the ready list first (see lib.lua: this keeps leasing working
  -- when Redis is full).
  if consumed > 0 then
    redis.call('LTRIM', key, consumed, -1)
  end
  for _, id in ipairs(later) do
    redis.call('LREM', key, 1, id)
  end
end

-- A keyed queue: the groups of the level take turns (core::flow::Rotation,
-- as the table stores' ReadyQueue::next and served do), FIFO within each. A
-- group whose key has no room, or whose tasks are all passed over, keeps its
-- place; a served group goes to the back. Reads at most `want + SKIP_SCAN`
-- groups of the turn and about `want` tasks plus one fetch per group, so a
-- lease never walks every key.
local function lease_rotation(p)
  local turn = k_turn(p)
  local window = want - #ids + SKIP_SCAN
  local order = redis.call('ZRANGE', turn, 0, window - 1)
  -- All of the turn is in `order`: a served group can come round again.
  local whole = #order < window
  -- Tasks put in the no-key list by an older build (or before the queue's
  -- first key) form the no-key group; not yet in the turn, it goes first.
  local joins = false
  if redis.call('LLEN', k_ready(p)) > 0 and not redis.call('ZSCORE', turn, '') then
    table.insert(order, 1, '')
    joins = true
  end
  local groups, served, serves, skips = {}, {}, 0, 0
  -- Whether this call took every task group `g` held.
  local function drained(g)
    return g.exhausted and not g.passed and g.at > #g.ids
  end
  -- The next task group `name` can give: 'take', or why not: 'closed'
  -- (nothing it holds can go now), 'empty', 'scanned' (SKIP_SCAN passed
  -- over: the level is done), 'stop' or 'full'.
  local function next_of(name, g)
    while true do
      if by_key and name ~= '' and not room_for(name) then
        return 'closed'
      end
      if g.at > #g.ids then
        if g.exhausted then
          return g.passed and 'closed' or 'empty'
        end
        -- Fetch this group's share of what is wanted, and more when asked
        -- again; one more than the share, so that a group this call drains
        -- is known to be empty without reading it again.
        local share = math.ceil((want - #ids) / math.max(#order - g.turn_at + 1, 1)) + (g.passed and SKIP_SCAN or 0)
        local listed = redis.call('LRANGE', g.list, #g.ids, #g.ids + share)
        g.exhausted = #listed <= share
        if #listed == 0 then
          return g.passed and 'closed' or 'empty'
        end
        local metas = hmget(K_META, listed)
        local keys = (by_key and name == '') and task_keys(listed) or {}
        local sems = task_sems(listed)
        for i, id in ipairs(listed) do
          local n = #g.ids + 1
          g.ids[n], g.metas[n], g.keys[n], g.sems[n] = id, metas[i], keys[i], sems[i]
        end
      end
      local i = g.at
      g.at = i + 1
      local key = name ~= '' and name or g.keys[i]
      local what = consider(g.ids[i], g.metas[i], key or nil, g.sems[i])
      if what == 'take' or what == 'drop' then
        if g.passed then
          g.later[#g.later + 1] = g.ids[i]
        else
          g.consumed = i
        end
        if what == 'take' then
          return 'take'
        end
      elseif what == 'pass' then
        g.passed = true
        skips = skips + 1
        if skips >= SKIP_SCAN then
          return 'scanned'
        end
      else
        -- 'stop' or 'full': the task stays where it is, and its group with it.
        g.at = i
        return what
      end
    end
  end
  local head = 1
  while head <= #order and #ids < want do
    local name = order[head]
    local g = groups[name]
    if not g then
      g = {list = k_group(p, name), ids = {}, metas = {}, keys = {}, sems = {}, at = 1, consumed = 0, passed = false,
        exhausted = false, later = {}, turn_at = head}
      groups[name] = g
    end
    g.turn_at = head
    local what = next_of(name, g)
    head = head + 1
    if what == 'take' then
      serves = serves + 1
      served[name] = serves
      if whole then
        order[#order + 1] = name
      end
    elseif what == 'empty' then
      skips = skips + 1
    elseif what ~= 'closed' then
      break
    end
    if skips >= SKIP_SCAN then
      break
    end
  end
  -- Out of the lists first (see lib.lua: this keeps leasing working when
  -- Redis is full), then the turn: emptied groups leave it, served ones go
  -- to its back in the order they were last served.
  local left, moved = {}, {}
  for name, g in pairs(groups) do
    if g.consumed > 0 then
      redis.call('LTRIM', g.list, g.consumed, -1)
    end
    for _, id in ipairs(g.later) do
      redis.call('LREM', g.list, 1, id)
    end
    local unsure = g.consumed > 0 and not g.exhausted and g.at > #g.ids
    if drained(g) or (unsure and redis.call('EXISTS', g.list) == 0) then
      left[#left + 1] = name
    elseif served[name] then
      moved[#moved + 1] = name
    end
  end
  if #left > 0 then
    variadic('ZREM', turn, left)
  end
  if #moved > 0 then
    local base = redis.call('INCRBY', K_SEQ, serves) - serves
    local scored = {}
    for _, name in ipairs(moved) do
      scored[#scored + 1] = base + served[name]
      scored[#scored + 1] = name
    end
    variadic('ZADD', turn, scored)
  end
  if joins and not served[''] and not (groups[''] and drained(groups[''])) then
    redis.call('ZADD', turn, 0, '')
  end
end

for p = MAX_PRIORITY, 0, -1 do
  if #ids >= want or full or stopped then
    break
  end
  if counting then
    lease_rotation(p)
  else
    lease_fifo(p)
  end
end
out[1] = bytes
out[2] = full and 1 or 0
local names = {}
for name in pairs(blocked) do
  names[#names + 1] = name
end
out[3] = table.concat(names, ',')
local n = #ids
if n == 0 then
  return out
end
if per_ms then
  redis.call('HSET', K_FLOW, 'tokens', math.max(tokens - n, 0), 'at', tokens_at)
end
if counting then
  for _, key in ipairs(task_keys(ids)) do
    if key then
      redis.call('HINCRBY', K_FLOW, 'k:' .. key, 1)
    end
  end
end

-- Lease ids: the queue's counter (high bits) and a random part (low 21
-- bits). The counter alone would hand out an id twice if Redis lost its last
-- writes (a failover, a power loss under appendfsync everysec) after a worker
-- got its lease: the random part makes the re-delivery's id differ (but for
-- a 1 in 2^21 chance). Below 2^53: exact in a Lua number and in the f64 of
-- the meta record.
local first = redis.call('INCRBY', K_LEASE, n) - n
local random = tonumber(ARGV[11])
local function lease_id(i)
  local counter = (first + i) % 4294967296
  return counter * 2097152 + 1 + (random + i) % 2097151
end
local deadline = now + duration
local leased, metas = {}, {}
local watching = any_watched()
for i, id in ipairs(ids) do
  local _, attempt, size, _, _, _, _, tail = unpack_head(raws[i])
  local meta = pack_head(LEASED, attempt + 1, size, lease_id(i), deadline, now, worker) .. string.sub(raws[i], tail)
  raws[i] = meta
  leased[#leased + 1] = deadline
  leased[#leased + 1] = id
  metas[#metas + 1] = id
  metas[#metas + 1] = meta
  publish_changed(id, watching)
end
variadic('ZADD', K_LEASED, leased)
variadic('HSET', K_META, metas)
count('delivered', n) -- admin: the queue's totals
for i, body in ipairs(hmget(K_BODY, ids)) do
  out[#out + 1] = raws[i]
  out[#out + 1] = body or ''
  out[#out + 1] = ''
end
return out
