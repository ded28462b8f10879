"""
The shared ledger's Lua scripts (L{modeltrack.controls.redis_ledger}): each runs whole
inside Redis, so that a reservation, a settle or a reading sees every budget a call
falls under at one instant. Amounts are whole nano-USD, as strings.
"""

RESERVE = """
-- ARGV: request id, estimate, now, ttl, keep (ms), n, lease id, lease ttl; then per
-- budget: limit, '1' if it blocks, the lease wanted, the part of the lease not in use.
-- Returns per budget: spend, what else is held (for the decision), the lease granted
-- now, the lease Redis holds, and what others hold (reservations and leases).
local rid, estimate, now, ttl, keep, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6])
local lease_rid, lease_ttl = ARGV[7], tonumber(ARGV[8])
local out, blocked, state = {}, false, {}
for i = 1, n do
  local spend, held, expiry, total = KEYS[4*i-3], KEYS[4*i-2], KEYS[4*i-1], KEYS[4*i]
  for _, gone in ipairs(redis.call('ZRANGEBYSCORE', expiry, '-inf', now)) do
    local amount = redis.call('HGET', held, gone)
    if amount then redis.call('DECRBY', total, amount); redis.call('HDEL', held, gone) end
    redis.call('ZREM', expiry, gone)
  end
  local spent = 0
  for _, v in ipairs(redis.call('HVALS', spend)) do spent = spent + tonumber(v) end
  local mine = tonumber(redis.call('HGET', held, rid) or '0')
  local lease = tonumber(redis.call('HGET', held, lease_rid) or '0')
  local others = tonumber(redis.call('GET', total) or '0') - mine - lease
  local limit, blocks = tonumber(ARGV[5 + 4*i]), ARGV[6 + 4*i] == '1'
  -- The lease's idle part is this call's to use: only what is in use counts against it.
  local held_else = others + lease - math.min(tonumber(ARGV[8 + 4*i]), lease)
  if mine == 0 and blocks and spent + held_else + estimate > limit then blocked = true end
  state[i] = {spent, others, lease, limit, blocks, tonumber(ARGV[7 + 4*i])}
  out[5*i-4], out[5*i-3], out[5*i-2], out[5*i-1], out[5*i] = tostring(spent), tostring(held_else), '0', tostring(lease), tostring(others)
end
if not blocked and estimate > 0 then
  for i = 1, n do
    local held, expiry, total = KEYS[4*i-2], KEYS[4*i-1], KEYS[4*i]
    if redis.call('HSETNX', held, rid, estimate) == 1 then redis.call('INCRBY', total, estimate) end
    redis.call('ZADD', expiry, now + ttl, rid)
    local spent, others, lease, limit, blocks, want = unpack(state[i])
    if want > lease then
      local grant = want - lease
      if blocks then grant = math.min(grant, math.floor((limit - spent - others - lease - estimate) / 4)) end
      if grant > 0 then
        redis.call('HINCRBY', held, lease_rid, grant)
        redis.call('INCRBY', total, grant)
        lease = lease + grant
        out[5*i-2], out[5*i-1] = tostring(grant), tostring(lease)
      end
    end
    if lease > 0 then redis.call('ZADD', expiry, now + lease_ttl, lease_rid) end
    for _, key in ipairs({KEYS[4*i-3], held, expiry, total}) do redis.call('PEXPIRE', key, keep) end
  end
end
return out
"""

SETTLE = """
-- Calls that ended, and leases given back, in order. KEYS: per entry, per budget:
-- spend, held, expiry, total. ARGV: contributor, keep (ms), a lease's new expiry, then
-- per entry: the request id (or lease id), how much to take off it ('' for all of it),
-- its number of budgets, and per budget this contributor's spend to set, or ''.
-- Returns per entry, per budget: its spend (all contributors) and all it holds.
local contributor, keep, lease_until = ARGV[1], ARGV[2], ARGV[3]
local a, k, out = 4, 0, {}
while a <= #ARGV do
  local rid, take, n = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2])
  for i = 1, n do
    local spend, held, expiry, total = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4]
    local amount = tonumber(redis.call('HGET', held, rid) or '0')
    local taken = amount
    if take ~= '' then taken = math.min(amount, tonumber(take)) end
    if taken > 0 then redis.call('DECRBY', total, taken) end
    if taken == amount then
      redis.call('HDEL', held, rid)
      redis.call('ZREM', expiry, rid)
    else
      redis.call('HINCRBY', held, rid, -taken)
      redis.call('ZADD', expiry, lease_until, rid)
    end
    local share = ARGV[a + 2 + i]
    if share ~= '' then
      redis.call('HSET', spend, contributor, share)
      redis.call('PEXPIRE', spend, keep)
    end
    local spent = 0
    for _, v in ipairs(redis.call('HVALS', spend)) do spent = spent + tonumber(v) end
    out[#out + 1], out[#out + 2] = tostring(spent), redis.call('GET', total) or '0'
    k = k + 4
  end
  a = a + 3 + n
end
return out
"""

STANDING = """
-- KEYS: per budget: spend, total. Returns each one's spend (all contributors) and open reservations.
local out = {}
for i = 1, #KEYS / 2 do
  local spent = 0
  for _, v in ipairs(redis.call('HVALS', KEYS[2*i-1])) do spent = spent + tonumber(v) end
  out[2*i-1], out[2*i] = tostring(spent), redis.call('GET', KEYS[2*i]) or '0'
end
return out
"""
