-- Admit a batch of requests of one team, in order, atomically: each is decided against its
-- team's limits as the requests before it left them, and reserves its expected tokens.
-- Counts are whole numbers; times are in seconds.
-- Runs after its prelude, usage.lua (add_usage, write_usage).
-- KEYS: 1 the team's requests this minute, 2 its images this minute,
--       3 its usage hash of the day, 4 its token hash of the month, then for each request:
--       its reservation (read back by settle.lua) and the marker that it is settled (set
--       when its usage is recorded here) (one team: one hash slot)
-- ARGV: 1..4 limits: requests per minute, images per minute, tokens per day, tokens per
--            month (-1: unlimited),
--       5 seconds a minute counter lives, 6 a day hash, 7 a month hash, 8 a reservation,
--       9 a settled marker, then for each request: requests, images, tokens to reserve,
--       n, and n usage field and amount pairs added to the day hash if it is admitted
-- Returns for each request {1} when admitted, else {0, which limit (1..4), its value,
--       what remains of it}.
local limits = {}
for i = 1, 4 do limits[i] = tonumber(ARGV[i]) end
local day = redis.call('HMGET', KEYS[3], 'billed_tokens', 'reserved_tokens')
local month = redis.call('HMGET', KEYS[4], 'billed_tokens', 'reserved_tokens')
local used = {
  tonumber(redis.call('GET', KEYS[1]) or 0),
  tonumber(redis.call('GET', KEYS[2]) or 0),
  tonumber(day[1] or 0) + tonumber(day[2] or 0),
  tonumber(month[1] or 0) + tonumber(month[2] or 0),
}
local added = {0, 0, 0}  -- requests, images, tokens reserved
local usage, fields, rejected = {}, {}, 0
local answers, member, at = {}, 0, 10
while at <= #ARGV do
  member = member + 1
  local requests, images = tonumber(ARGV[at]), tonumber(ARGV[at + 1])
  local reserve, pairs = tonumber(ARGV[at + 2]), tonumber(ARGV[at + 3])
  local asked = {requests, images, reserve, reserve}
  local answer = {1}
  for i = 1, 4 do
    if limits[i] >= 0 and asked[i] > 0 and used[i] + asked[i] > limits[i] then
      answer = {0, i, limits[i], math.max(0, limits[i] - used[i])}
      break
    end
  end
  if answer[1] == 1 then
    for i = 1, 4 do used[i] = used[i] + asked[i] end
    added[1], added[2], added[3] = added[1] + requests, added[2] + images, added[3] + reserve
    if reserve > 0 then
      redis.call('SET', KEYS[3 + 2 * member], reserve, 'EX', ARGV[8])
    end
    add_usage(usage, fields, at + 4, pairs)
    if pairs > 0 then redis.call('SET', KEYS[4 + 2 * member], 1, 'EX', ARGV[9]) end
  else
    rejected = rejected + 1
  end
  answers[member] = answer
  at = at + 4 + 2 * pairs
end
for i = 1, 2 do
  if added[i] > 0 then
    redis.call('INCRBY', KEYS[i], added[i])
    redis.call('EXPIRE', KEYS[i], ARGV[5])
  end
end
if added[3] > 0 then
  redis.call('HINCRBY', KEYS[3], 'reserved_tokens', added[3])
  redis.call('HINCRBY', KEYS[4], 'reserved_tokens', added[3])
  redis.call('EXPIRE', KEYS[4], ARGV[7])
end
write_usage(KEYS[3], usage, fields)
if rejected > 0 then redis.call('HINCRBY', KEYS[3], 'rejected', rejected) end
redis.call('EXPIRE', KEYS[3], ARGV[6])
return answers
