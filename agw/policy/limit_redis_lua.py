"""The Lua scripts of the Redis limit backend (agw/policy/limit_redis.py), each run atomically
by Redis: ``RESERVE`` (check and hold all of a request's counters, the clamp included),
``EXTEND`` (a stream takes more), ``SETTLE`` (drop a hold, count what was used) and ``RESET``.
They port :class:`~agw.policy.limit_backend.InProcessBackend`'s arithmetic line for line; the
semantics suite (tests/limits/test_limit_backend.py) runs against both.

A counter is a hash: ``u1..u6`` used and ``h1..h6`` held per meter (the order of
``agw.policy.limit_backend.METERS``), ``s``/``e`` its window's bounds (``e`` -1: never ends).
Numbers travel as ``%.17g`` strings (Redis would truncate a Lua number to an integer).
"""

from __future__ import annotations

_LUA_COMMON = """
local function fmt(x) return string.format('%.17g', x) end
local F = {'u1','u2','u3','u4','u5','u6','h1','h2','h3','h4','h5','h6','s','e'}
local function write(key, u, h, s, e, margin, now)
  redis.call('HSET', key, 'u1', fmt(u[1]), 'u2', fmt(u[2]), 'u3', fmt(u[3]), 'u4', fmt(u[4]),
    'u5', fmt(u[5]), 'u6', fmt(u[6]), 'h1', fmt(h[1]), 'h2', fmt(h[2]), 'h3', fmt(h[3]),
    'h4', fmt(h[4]), 'h5', fmt(h[5]), 'h6', fmt(h[6]), 's', s, 'e', e)
  if tonumber(e) >= 0 then redis.call('EXPIRE', key, math.ceil(tonumber(e) + margin - now)) end
end
local function vector(text)
  local out = {}
  for x in string.gmatch(text, '[^,]+') do out[#out + 1] = tonumber(x) end
  return out
end
local function joined(v)
  return table.concat({fmt(v[1]), fmt(v[2]), fmt(v[3]), fmt(v[4]), fmt(v[5]), fmt(v[6])}, ',')
end
"""

# KEYS: one counter per charge, then the request's hold (its marker: what it holds, until its
# settle takes it). ARGV: now, want, fixed[6], per_output[6], margin, hold TTL, then per charge:
# window start, window end (-1: never), enforce (0|1), min_output_tokens, caps[6] (-1: none).
# Returns {0, charge, meter, s, e, used[6], held[6]} (refused) or {1, granted, clamped
# charge, shadow charge, then per counter s, e, used[6], held[6]} (0: none; 1-based).
RESERVE = (
    _LUA_COMMON
    + """
local now, want, margin = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[15])
local fixed, per, n = {}, {}, #KEYS - 1
for m = 1, 6 do fixed[m] = tonumber(ARGV[2 + m]); per[m] = tonumber(ARGV[8 + m]) end
local used, held, starts, ends, caps, enforce, floors = {}, {}, {}, {}, {}, {}, {}
for i = 1, n do
  local a = 16 + (i - 1) * 10
  local v = redis.call('HMGET', KEYS[i], unpack(F))
  local e = tonumber(v[14])
  local fresh = e == nil or (e >= 0 and now >= e)
  local u, h, c = {}, {}, {}
  for m = 1, 6 do
    u[m] = fresh and 0 or (tonumber(v[m]) or 0)
    h[m] = tonumber(v[6 + m]) or 0
    c[m] = tonumber(ARGV[a + 4 + m])
  end
  used[i], held[i], caps[i] = u, h, c
  if fresh then
    starts[i], ends[i] = ARGV[a + 1], ARGV[a + 2]
  else
    starts[i], ends[i] = v[13], v[14]
  end
  enforce[i], floors[i] = ARGV[a + 3] == '1', tonumber(ARGV[a + 4])
end
local function state(out, i)
  out[#out + 1] = starts[i]; out[#out + 1] = ends[i]
  for m = 1, 6 do out[#out + 1] = fmt(used[i][m]) end
  for m = 1, 6 do out[#out + 1] = fmt(held[i][m]) end
  return out
end
local eps = 1e-9
local granted, clamped, shadow, floor = want, 0, 0, 0
for i = 1, n do
  for m = 1, 6 do
    local cap = caps[i][m]
    if cap >= 0 then
      local avail = cap - used[i][m] - held[i][m] - fixed[m]
      local p, fits, ok = per[m], -1, false
      if p > 0 then
        if avail >= -eps then fits = math.floor(avail / p + eps) end
        ok = fits >= want
      else
        ok = avail >= -eps
      end
      if not ok then
        if not enforce[i] then
          if shadow == 0 then shadow = i end
        else
          if fits < 1 or fits < floors[i] or p == 0 then return state({0, i, m}, i) end
          if fits < granted then granted, clamped = fits, i end
          if floors[i] > floor then floor = floors[i] end
        end
      end
    end
  end
end
if granted < floor then
  for m = 1, 6 do
    if caps[clamped][m] >= 0 and per[m] > 0 then return state({0, clamped, m}, clamped) end
  end
end
local out, hold = {1, granted, clamped, shadow}, {}
for m = 1, 6 do hold[m] = fixed[m] + granted * per[m] end
for i = 1, n do
  for m = 1, 6 do held[i][m] = held[i][m] + hold[m] end
  write(KEYS[i], used[i], held[i], starts[i], ends[i], margin, now)
  state(out, i)
end
redis.call('SET', KEYS[#KEYS], joined(hold), 'EX', ARGV[16])
return out
"""
)

# KEYS: the grant's counters, then its hold. ARGV: extra[6], then per charge: mode (0 shadow,
# 1 finish, 2 cut) and caps[6]. Returns {0, charge} (a cut limit cannot pay: nothing taken) or
# {1, exceeded...}; {2} when the hold is gone (settled, or expired): nothing taken.
EXTEND = (
    _LUA_COMMON
    + """
local extra, rows, exceeded, n = {}, {}, {}, #KEYS - 1
local hold = redis.call('GET', KEYS[#KEYS])
if not hold then return {2} end
for m = 1, 6 do extra[m] = tonumber(ARGV[m]) end
for i = 1, n do
  local a = 6 + (i - 1) * 7
  local v = redis.call('HMGET', KEYS[i], unpack(F))
  rows[i] = v
  if ARGV[a + 1] ~= '0' then
    local over = false
    for m = 1, 6 do
      local cap = tonumber(ARGV[a + 1 + m])
      local total = (tonumber(v[m]) or 0) + (tonumber(v[6 + m]) or 0) + extra[m]
      if cap >= 0 and extra[m] > 0 and total > cap + 1e-9 then
        if ARGV[a + 1] == '2' then return {0, i} end
        over = true
      end
    end
    if over then exceeded[#exceeded + 1] = i end
  end
end
for i = 1, n do
  for m = 1, 6 do
    if extra[m] ~= 0 then
      redis.call('HSET', KEYS[i], 'h' .. m, fmt((tonumber(rows[i][6 + m]) or 0) + extra[m]))
    end
  end
end
hold = vector(hold)
for m = 1, 6 do hold[m] = hold[m] + extra[m] end
redis.call('SET', KEYS[#KEYS], joined(hold), 'KEEPTTL')
return {1, unpack(exceeded)}
"""
)

# KEYS: the grant's counters, then its hold, taken (deleted) here: a settle runs once however
# often it is sent, and one for a reservation that never happened does nothing. ARGV: now,
# margin, actual[6], then per charge: the current window's start and end (-1: never). A counter
# that is gone (expired) starts afresh.
SETTLE = (
    _LUA_COMMON
    + """
local now, margin = tonumber(ARGV[1]), tonumber(ARGV[2])
local taken = redis.call('GET', KEYS[#KEYS])
if not taken then return 0 end
redis.call('DEL', KEYS[#KEYS])
local holds = vector(taken)
for i = 1, #KEYS - 1 do
  local a = 8 + (i - 1) * 2
  local v = redis.call('HMGET', KEYS[i], unpack(F))
  local e = tonumber(v[14])
  local u, h, s, en = {}, {}, v[13], v[14]
  for m = 1, 6 do
    local hold, actual = holds[m], tonumber(ARGV[2 + m])
    if e == nil then
      u[m], h[m] = actual, 0
    else
      local past = e >= 0 and now >= e
      u[m] = (past and 0 or (tonumber(v[m]) or 0)) + actual
      h[m] = (tonumber(v[6 + m]) or 0) - hold
    end
  end
  if e == nil or (e >= 0 and now >= e) then s, en = ARGV[a + 1], ARGV[a + 2] end
  write(KEYS[i], u, h, s, en, margin, now)
end
return 1
"""
)

# KEYS: counters. Zeroes what was used (holds of requests in flight stay); returns how many.
RESET = """
local n = 0
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('HSET', KEYS[i], 'u1', '0', 'u2', '0', 'u3', '0', 'u4', '0', 'u5', '0', 'u6', '0')
    n = n + 1
  end
end
return n
"""
