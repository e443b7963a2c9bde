-- Spend units of a rate (GCRA), on the Redis server's clock, so every replica spends the
-- same rate: the rule of gateway/store/rate.py's spend, step for step.
-- KEYS: 1 the rate's theoretical arrival time (TAT) of its next unit, in ms
-- ARGV: 1 units to spend, 2 units a second, 3 units a full rate holds at once
-- Returns 0 when they are spent; else the ms until they would be left (at least 1), with
-- nothing spent.
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + tonumber(clock[2]) / 1000
local cost, per_second, at_once = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local interval = 1000 / per_second
local after = math.max(tonumber(redis.call('GET', KEYS[1]) or 0), now) + cost * interval
local over = after - now - at_once * interval
-- Over by less than a microsecond is the clock's rounding (rate.py's TOLERANCE_MS).
if over > 0.001 then return math.max(1, math.ceil(over)) end
-- Kept a second past the time the rate is full again: absent, it is full. Written with every
-- digit of the double (17), as rate.py keeps it: rounded, the next spend's wait could differ.
redis.call('SET', KEYS[1], string.format('%.17g', after), 'PX', math.ceil(after - now) + 1000)
return 0
