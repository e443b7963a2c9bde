-- Admit a batch of requests of one team, in order, atomically: each is decided against its
-- team's limits as the requests before it left them, and reserves its expected tokens, or the
-- most it can cost while the team's requests under way hold tokens (quota.Demand.tokens).
-- Counts are whole numbers; times are in seconds.
-- Runs after its prelude, usage.lua (add_usage, write_usage, lease, the tag functions).
-- Each reservation is leased: a request settles long before its lease ends, so one still
-- held then was left by a process that died first. Each call first releases up to ARGV[14]
-- such reservations of the team (from the day and month hashes they were counted in; a
-- lease names them) and returns how many and the tokens they held.
-- KEYS: 1 the team's requests this minute, 2 its images this minute, 3 its texts this
--       minute, 4 its usage hash of the day, 5 its token hash of the month, 6 its leases
--       (a sorted set: reservations by the time their lease ends), 7 its usage hash of the
--       day by tag, 8 the set of the day's tags counted toward the bound, then for each request:
--       its reservation (read back by settle.lua) and the marker that it is settled (set
--       when its usage is recorded here), then settled markers whose answers came back (see
--       settle.lua) (one team: one hash slot)
-- ARGV: 1..5 limits: requests per minute, images per minute, texts per minute, tokens per
--            day, tokens per month (-1: unlimited),
--       6 seconds a minute counter lives, 7 a day hash, 8 a month hash, 9 a reservation,
--       10 a settled marker, 11 how many markers whose answers came back end KEYS, 12 seconds
--       they live from now, 13 seconds a lease lasts, 14 the most lapsed leases to release,
--       15 the most tags a day (write_tags), then for each request: requests, images, texts,
--       its expected tokens, the most tokens it can cost (-1: no more than expected), n, n
--       usage field and amount pairs added to the day hash (and under its tag) if it is
--       admitted, and its tag (its rejection is counted under it)
-- Returns {answers, lapsed reservations released, the tokens they held}: for each request
--       {1} when admitted, else {0, which limit (1..5), its value, what remains of it, what
--       the request asked of it}.
local answered = tonumber(ARGV[11])
for i = #KEYS - answered + 1, #KEYS do redis.call('EXPIRE', KEYS[i], ARGV[12]) end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1e6
local lapsed = redis.call('ZRANGEBYSCORE', KEYS[6], '-inf', now, 'LIMIT', 0, ARGV[14])
local released, tokens = 0, 0
for _, entry in ipairs(lapsed) do
  -- day hash, month hash and reservation, one per line (see lease() in usage.lua)
  local day_key, month_key, reservation = string.match(entry, '^(.-)\n(.-)\n(.*)$')
  local held = tonumber(redis.call('GET', reservation) or 0)
  if held ~= 0 then
    redis.call('DEL', reservation)
    redis.call('HINCRBY', day_key, 'reserved_tokens', -held)
    redis.call('HINCRBY', month_key, 'reserved_tokens', -held)
    released, tokens = released + 1, tokens + held
  end
  redis.call('ZREM', KEYS[6], entry)
end
local limits = {}
for i = 1, 5 do limits[i] = tonumber(ARGV[i]) end
local day = redis.call('HMGET', KEYS[4], 'billed_tokens', 'reserved_tokens')
local month = redis.call('HMGET', KEYS[5], 'billed_tokens', 'reserved_tokens')
local used = {
  tonumber(redis.call('GET', KEYS[1]) or 0),
  tonumber(redis.call('GET', KEYS[2]) or 0),
  tonumber(redis.call('GET', KEYS[3]) or 0),
  tonumber(day[1] or 0) + tonumber(day[2] or 0),
  tonumber(month[1] or 0) + tonumber(month[2] or 0),
}
local held = tonumber(month[2] or 0)  -- tokens the team's requests under way reserved
local added = {0, 0, 0, 0}  -- requests, images, texts, tokens reserved
local usage, fields, rejected = {}, {}, 0
local tagged, tag_order = {}, {}
local answers, member, at = {}, 0, 16
while at <= #ARGV do
  member = member + 1
  local reserve, most = tonumber(ARGV[at + 3]), tonumber(ARGV[at + 4])
  local pairs = tonumber(ARGV[at + 5])
  local tag = ARGV[at + 6 + 2 * pairs]
  if held + added[4] > 0 then reserve = math.max(reserve, most) end
  local asked = {tonumber(ARGV[at]), tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2]), reserve,
                 reserve}
  local answer = {1}
  for i = 1, 5 do
    if limits[i] >= 0 and asked[i] > 0 and used[i] + asked[i] > limits[i] then
      answer = {0, i, limits[i], math.max(0, limits[i] - used[i]), asked[i]}
      break
    end
  end
  if answer[1] == 1 then
    for i = 1, 5 do used[i] = used[i] + asked[i] end
    for i = 1, 4 do added[i] = added[i] + asked[i] end
    if reserve > 0 then
      local reservation = KEYS[7 + 2 * member]
      redis.call('SET', reservation, reserve, 'EX', ARGV[9])
      redis.call('ZADD', KEYS[6], now + tonumber(ARGV[13]), lease(KEYS[4], KEYS[5], reservation))
    end
    add_usage(usage, fields, at + 6, pairs)
    add_tagged_usage(tagged, tag_order, tag, at + 6, pairs)
    if pairs > 0 then redis.call('SET', KEYS[8 + 2 * member], 1, 'EX', ARGV[10]) end
  else
    rejected = rejected + 1
    add_tagged(tagged, tag_order, tag, 'rejected', 1)
  end
  answers[member] = answer
  at = at + 7 + 2 * pairs
end
for i = 1, 3 do
  if added[i] > 0 then
    redis.call('INCRBY', KEYS[i], added[i])
    redis.call('EXPIRE', KEYS[i], ARGV[6])
  end
end
if added[4] > 0 then  -- tokens reserved: each reservation added a lease
  redis.call('HINCRBY', KEYS[4], 'reserved_tokens', added[4])
  redis.call('HINCRBY', KEYS[5], 'reserved_tokens', added[4])
  redis.call('EXPIRE', KEYS[5], ARGV[8])
  redis.call('EXPIRE', KEYS[6], ARGV[9])
end
write_usage(KEYS[4], usage, fields)
if rejected > 0 then redis.call('HINCRBY', KEYS[4], 'rejected', rejected) end
redis.call('EXPIRE', KEYS[4], ARGV[7])
if #tag_order > 0 then
  write_tags(KEYS[7], KEYS[8], tonumber(ARGV[15]), tagged, tag_order)
  redis.call('EXPIRE', KEYS[7], ARGV[7])
  redis.call('EXPIRE', KEYS[8], ARGV[7])
end
return {answers, released, tokens}
