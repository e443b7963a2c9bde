-- Uncount one upstream call of a team counted in a UTC minute (team_call.lua) that was never
-- made; a count is never taken below 0, nor made again once it expired.
-- KEYS: 1 the team's calls counted in the minute
local used = tonumber(redis.call('GET', KEYS[1]) or 0)
if used > 0 then redis.call('DECR', KEYS[1]) end
return used
