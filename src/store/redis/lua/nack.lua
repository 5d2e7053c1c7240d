-- nack: retries (READY or SCHEDULED) or kills (DEAD) a leased task.
-- Mirrors core::transition::on_nack (and core::retry::Backoff::delay, bit for
-- bit); tests/differential.rs keeps the two equal.
-- KEYS: the queue's keys (lib.lua); writes meta, leased, ready, scheduled, finished, seq,
--       totals, ids_scheduled, ids_dead.
-- ARGV[4]: task id
-- ARGV[5]: lease id presented by the worker
-- ARGV[6]: error text
-- ARGV[7]: '1' to go straight to DEAD, else '0'
-- ARGV[8]: retry delay (ms) instead of the backoff, or '' for the backoff
-- ARGV[9..12]: the queue's backoff: initial (ms), max (ms), multiplier, jitter
-- ARGV[13]: a random number in [0, 1) for the jitter
-- ARGV[14]: the queue's retention of finished tasks (ms)
-- Returns: {'ok', meta, body, result} | {'not_found'} | {'mismatch'} | {'canceled'}
-- Publishes: `ready <queue> 1` if the task is READY again at once; `changed <id>`
--            if the task is watched.

local now = clock()
local t, err = load_held(ARGV[4], tonumber(ARGV[5]), now)
if not t then
  return {err}
end

-- x^n by repeated squaring, exactly as Rust's f64::powi (compiler-rt's
-- __powidf2) computes it, so the delay matches core::retry::Backoff::delay.
local function powi(x, n)
  local r = 1
  while true do
    if n % 2 == 1 then
      r = r * x
    end
    n = math.floor(n / 2)
    if n == 0 then
      return r
    end
    x = x * x
  end
end

-- core::retry::Backoff::delay, step by step in doubles.
local function backoff(attempt)
  local initial, max = tonumber(ARGV[9]), tonumber(ARGV[10])
  local multiplier, jitter = tonumber(ARGV[11]), tonumber(ARGV[12])
  local sample = math.min(math.max(tonumber(ARGV[13]), 0), 1)
  local exponent = math.min(math.max(attempt - 1, 0), 64)
  local base = initial * powi(multiplier, exponent)
  local factor = 1 + jitter * (2 * sample - 1)
  local capped = math.min(base * factor, max)
  return math.floor(math.max(capped, 0))
end

local retry_in = nil
if ARGV[7] ~= '1' and t.attempt < t.max_attempts then
  if ARGV[8] ~= '' then
    retry_in = tonumber(ARGV[8])
  else
    retry_in = backoff(t.attempt)
  end
end

unindex(t)
-- admin: the queue's totals (a nack that kills counts as a death too).
count('nacked', 1)
count('dead', retry_in == nil and 1 or 0)
release_keys({t.id})
t.last_error = ARGV[6]
clear_lease(t)
t.update_time = now
if retry_in == nil then
  make_final(t, DEAD, tonumber(ARGV[14]))
  if in_workflow() then
    on_end(t.id, DEAD)
  end
elseif retry_in == 0 then
  make_ready(t)
  publish_ready(1)
else
  make_scheduled(t, now + retry_in)
end
local raw = save(t)
publish_changed(t.id, any_watched())
return {'ok', record(t, raw)}
