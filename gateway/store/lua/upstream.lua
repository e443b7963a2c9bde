-- The prelude of slot.lua, pace.lua, start_call.lua, renew_slots.lua and hold.lua (run before
-- each, see RedisBackend.script): the global cap and rate of upstream calls, shared by every
-- replica.
-- Times are in milliseconds, on the Redis server's clock (replicas' clocks may differ).

local function now_ms()
  local clock = redis.call('TIME')
  return tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
end

-- Keep the slots twice as long as the latest lease in them has left (past it, none is held):
-- as long as that, whatever lease this caller has, so a replica with a shorter lease (its
-- settings changed) never drops another's slot with the set.
local function keep_slots(slots, now)
  local latest = redis.call('ZRANGE', slots, -1, -1, 'WITHSCORES')[2]
  if latest then redis.call('PEXPIRE', slots, 2 * (tonumber(latest) - now)) end
end

-- Take one of cap call slots (a sorted set of holders, scored by the end of their lease) for
-- holder until now + lease; false when all are held. A holder that dies without releasing
-- its slot loses it when the lease ends.
local function take_slot(slots, holder, cap, lease, now)
  redis.call('ZREMRANGEBYSCORE', slots, '-inf', now)
  if redis.call('ZCARD', slots) >= cap then return false end
  redis.call('ZADD', slots, now + lease, holder)
  keep_slots(slots, now)
  return true
end

-- Reserve the next call under the rate (GCRA): tat_key holds the theoretical arrival time of
-- the next call, hold_key the end of a pause Nomic asked for (hold.lua), which a burst does
-- not jump. Returns the wait before the reserved call may go, or minus that wait (nothing
-- reserved) when it would be longer than max_wait.
local function pace(tat_key, hold_key, interval, burst, max_wait, now)
  local tat = tonumber(redis.call('GET', tat_key) or 0)
  if tat < now then tat = now end
  local wait = tat - (burst - 1) * interval - now
  local held = tonumber(redis.call('GET', hold_key) or 0) - now
  if held > wait then wait = held end
  if wait < 0 then wait = 0 end
  if wait > max_wait then return -math.max(1, wait) end
  tat = math.max(tat, now + wait)
  redis.call('SET', tat_key, tat + interval, 'PX', tat + interval - now + 1000)
  return wait
end

-- Extend the leases of these holders' slots to now + lease, where they still hold one (a
-- lapsed slot is not taken back: another caller may have it by now).
local function renew_slots(slots, holders, lease, now)
  redis.call('ZREMRANGEBYSCORE', slots, '-inf', now)
  local renewed = 0
  for _, holder in ipairs(holders) do
    renewed = renewed + redis.call('ZADD', slots, 'XX', 'CH', now + lease, holder)
  end
  if renewed > 0 then keep_slots(slots, now) end
  return renewed
end
