-- Reserve the next upstream call under the global rate; runs after upstream.lua.
-- KEYS: 1 the theoretical arrival time of the next call, 2 the end of Nomic's pause
-- ARGV: 1 emission interval (period / calls), 2 burst (calls that may go back to back),
--       3 the longest the caller will wait
-- Returns the wait before the reserved call may go, or minus that wait (nothing reserved)
-- when it would be longer than ARGV[3].
return pace(KEYS[1], KEYS[2], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), now_ms())
