-- Pause every replica's upstream calls: Nomic asked for it (Retry-After); runs after
-- upstream.lua.
-- Times are in milliseconds, on the Redis server's clock.
-- KEYS: 1 the end of the pause, read by pace.lua
-- ARGV: 1 the pause
local resume = now_ms() + tonumber(ARGV[1])
if tonumber(redis.call('GET', KEYS[1]) or 0) < resume then
  redis.call('SET', KEYS[1], resume, 'PX', tonumber(ARGV[1]) + 1000)
end
return 1
