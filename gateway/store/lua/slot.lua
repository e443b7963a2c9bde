-- Take one of the upstream call slots (the global concurrency cap), shared by every replica.
-- Times are in milliseconds, on the Redis server's clock. A slot is a lease: a holder that
-- dies without releasing it loses it when the lease ends.
-- KEYS: 1 sorted set of holders, scored by the end of their lease
-- ARGV: 1 holder id, 2 the cap, 3 lease length
-- Returns 1 when the slot is taken, 0 when all are held.
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]) * 2)
return 1
