-- Take one of the upstream call slots (the global concurrency cap); runs after upstream.lua.
-- KEYS: 1 sorted set of holders, scored by the end of their lease
-- ARGV: 1 holder id, 2 the cap, 3 lease length
-- Returns 1 when the slot is taken, 0 when all are held.
if take_slot(KEYS[1], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), now_ms()) then return 1 end
return 0
