-- A call slot and the rate's next call in one round trip (slot.lua, then pace.lua), for a
-- batch that has nothing to wait for; runs after upstream.lua.
-- KEYS: 1 the slots, 2 the rate's next arrival time, 3 the end of Nomic's pause
-- ARGV: 1 holder id, 2 the cap, 3 lease length, 4 emission interval, 5 burst, 6 the longest
--       the caller will wait
-- Returns nil when every slot is held; else what pace returns (a negative wait: the slot was
-- given back, nothing reserved).
local now = now_ms()
if not take_slot(KEYS[1], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), now) then return false end
local wait = pace(KEYS[2], KEYS[3], tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), now)
if wait < 0 then redis.call('ZREM', KEYS[1], ARGV[1]) end
return wait
