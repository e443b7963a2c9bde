-- Admit one request against its team's limits, atomically, and reserve its expected tokens.
-- Counts are whole numbers; times are in seconds.
-- KEYS: 1 the team's requests this minute, 2 its images this minute,
--       3 its usage hash of the day, 4 its token hash of the month,
--       5 the request's reservation, read back by settle.lua, 6 the marker that the request
--       is settled (set when its usage is recorded here) (one team: one hash slot)
-- ARGV: 1 requests, 2 images, 3 tokens to reserve,
--       4..7 limits: requests per minute, images per minute, tokens per day, tokens per month
--            (-1: unlimited),
--       8 seconds a minute counter lives, 9 seconds a day hash lives, 10 a month hash,
--       11 seconds a reservation lives, 12 seconds a settled marker lives,
--       13.. usage field and amount pairs added to the day hash when admitted
-- Returns {1} when admitted, else {0, which limit (1..4), its value, what remains of it}.
local requests, images, reserve = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local day = redis.call('HMGET', KEYS[3], 'billed_tokens', 'reserved_tokens')
local month = redis.call('HMGET', KEYS[4], 'billed_tokens', 'reserved_tokens')
local used = {
  tonumber(redis.call('GET', KEYS[1]) or 0),
  tonumber(redis.call('GET', KEYS[2]) or 0),
  tonumber(day[1] or 0) + tonumber(day[2] or 0),
  tonumber(month[1] or 0) + tonumber(month[2] or 0),
}
local asked = {requests, images, reserve, reserve}
for i = 1, 4 do
  local limit = tonumber(ARGV[3 + i])
  if limit >= 0 and asked[i] > 0 and used[i] + asked[i] > limit then
    redis.call('HINCRBY', KEYS[3], 'rejected', 1)
    redis.call('EXPIRE', KEYS[3], ARGV[9])
    return {0, i, limit, math.max(0, limit - used[i])}
  end
end
if requests > 0 then
  redis.call('INCRBY', KEYS[1], requests)
  redis.call('EXPIRE', KEYS[1], ARGV[8])
end
if images > 0 then
  redis.call('INCRBY', KEYS[2], images)
  redis.call('EXPIRE', KEYS[2], ARGV[8])
end
if reserve > 0 then
  redis.call('HINCRBY', KEYS[3], 'reserved_tokens', reserve)
  redis.call('HINCRBY', KEYS[4], 'reserved_tokens', reserve)
  redis.call('EXPIRE', KEYS[4], ARGV[10])
  redis.call('SET', KEYS[5], reserve, 'EX', ARGV[11])
end
for i = 13, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[3], ARGV[i], ARGV[i + 1])
end
if #ARGV >= 13 then redis.call('SET', KEYS[6], 1, 'EX', ARGV[12]) end
redis.call('EXPIRE', KEYS[3], ARGV[9])
return {1}
