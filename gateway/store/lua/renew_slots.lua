-- Keep upstream call slots alive while their holders call; runs after upstream.lua.
-- KEYS: 1 the slots
-- ARGV: 1 lease length, then the holders
-- Returns how many were extended.
local holders = {}
for i = 2, #ARGV do holders[#holders + 1] = ARGV[i] end
return renew_slots(KEYS[1], holders, tonumber(ARGV[1]), now_ms())
