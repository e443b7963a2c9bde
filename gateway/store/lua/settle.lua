-- Settle a request: release the tokens it reserved, add what was billed and its usage.
-- Counts are whole numbers; times are in seconds.
-- KEYS: 1 the team's usage hash of the day the reservation was made,
--       2 its token hash of that month (one team: one hash slot)
-- ARGV: 1 tokens reserved, to release, 2 tokens billed, 3 seconds a day hash lives,
--       4 seconds a month hash lives, 5.. usage field and amount pairs for the day hash
local reserved, billed = tonumber(ARGV[1]), tonumber(ARGV[2])
for _, key in ipairs(KEYS) do
  if reserved ~= 0 then redis.call('HINCRBY', key, 'reserved_tokens', -reserved) end
  if billed ~= 0 then redis.call('HINCRBY', key, 'billed_tokens', billed) end
end
for i = 5, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return 1
