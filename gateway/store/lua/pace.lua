-- Reserve the next upstream call under the global rate (GCRA), shared by every replica.
-- Times are in milliseconds, on the Redis server's clock (replicas' clocks may differ).
-- KEYS: 1 the theoretical arrival time of the next call, 2 the end of a pause Nomic asked for
--       (hold.lua), which a burst does not jump
-- ARGV: 1 emission interval (period / calls), 2 burst (calls that may go back to back),
--       3 the longest the caller will wait
-- Returns the wait before the reserved call may go, or minus that wait (nothing reserved)
-- when it would be longer than ARGV[3].
local interval, burst, max_wait = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local tat = tonumber(redis.call('GET', KEYS[1]) or 0)
if tat < now then tat = now end
local wait = tat - (burst - 1) * interval - now
local held = tonumber(redis.call('GET', KEYS[2]) or 0) - now
if held > wait then wait = held end
if wait < 0 then wait = 0 end
if wait > max_wait then return -math.max(1, wait) end
tat = math.max(tat, now + wait)
redis.call('SET', KEYS[1], tat + interval, 'PX', tat + interval - now + 1000)
return wait
