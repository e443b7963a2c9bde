-- Settle a request once: release what it reserved, add what was billed and its usage.
-- Idempotent: a settle retried after a timeout (that had in fact run) changes nothing.
-- Counts are whole numbers; times are in seconds.
-- KEYS: 1 the team's usage hash of the day the reservation was made, 2 its token hash of that
--       month, 3 the marker that this settle ran, 4 the request's reservation (written by
--       admit.lua; absent when nothing was reserved) (one team: one hash slot)
-- ARGV: 1 tokens billed, 2 seconds a day hash lives, 3 seconds a month hash lives,
--       4 seconds the marker lives, 5.. usage field and amount pairs for the day hash
-- Returns 1 when applied, 0 when this settle had already run.
if not redis.call('SET', KEYS[3], 1, 'NX', 'EX', ARGV[4]) then return 0 end
local reserved = tonumber(redis.call('GET', KEYS[4]) or 0)
local billed = tonumber(ARGV[1])
if reserved ~= 0 then redis.call('DEL', KEYS[4]) end
for i = 1, 2 do
  if reserved ~= 0 then redis.call('HINCRBY', KEYS[i], 'reserved_tokens', -reserved) end
  if billed ~= 0 then redis.call('HINCRBY', KEYS[i], 'billed_tokens', billed) end
end
for i = 5, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return 1
