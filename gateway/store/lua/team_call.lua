-- Count one upstream call of a team in a UTC minute, if fewer than its limit are counted in
-- it (the rule of MemoryCoordinator.take_team_call): one atomic check-and-add, so replicas
-- racing never count more than the limit.
-- KEYS: 1 the team's calls counted in the minute (ng:v1:{t:<id>}:callpm:<minute>)
-- ARGV: 1 the limit (calls a minute), 2 how long the count is kept, in seconds
-- Returns 1 when the call is counted; 0 when the minute's calls are all counted (nothing
-- counted).
local used = tonumber(redis.call('GET', KEYS[1]) or 0)
if used >= tonumber(ARGV[1]) then return 0 end
redis.call('INCR', KEYS[1])
if used == 0 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return 1
