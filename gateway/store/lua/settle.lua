-- Settle a batch of requests of one team and day, each once: release what it reserved, add
-- what was billed and its usage. Idempotent per request: a settle retried after a timeout
-- (that had in fact run) changes nothing. Counts are whole numbers; times are in seconds.
-- Runs after its prelude, usage.lua (add_usage, write_usage, lease, the tag functions).
-- A marker lives as long as a retry of its settle can come (ARGV 3); the caller names the
-- markers whose answers reached it, to live ARGV 5 seconds from here, so only the markers of
-- answers lost stay that long.
-- KEYS: 1 the team's usage hash of the day the reservations were made, 2 its token hash of
--       that month, 3 its leases (see admit.lua), 4 its usage hash of the day by tag, 5 the
--       set of the day's tags counted toward the bound, then for each request: the marker that
--       its settle ran, and its reservation (written by admit.lua; absent when nothing was
--       reserved, or released when its lease lapsed), then the markers whose answers came
--       back (one team: one hash slot)
-- ARGV: 1 seconds a day hash lives, 2 seconds a month hash lives, 3 seconds a marker lives,
--       4 how many markers whose answers came back end KEYS, 5 seconds they live from now,
--       6 the most tags a day (write_tags), then for each request: tokens billed, n, n usage
--       field and amount pairs, and its tag (under which its tokens and usage count too)
-- Returns for each request 1 when applied, 0 when its settle had already run.
local answered = tonumber(ARGV[4])
for i = #KEYS - answered + 1, #KEYS do redis.call('EXPIRE', KEYS[i], ARGV[5]) end
local reserved, billed = 0, 0
local usage, fields = {}, {}
local tagged, tag_order = {}, {}
local answers, member, at = {}, 0, 7
while at <= #ARGV do
  member = member + 1
  local pairs = tonumber(ARGV[at + 1])
  local tag = ARGV[at + 2 + 2 * pairs]
  answers[member] = 0
  if redis.call('SET', KEYS[4 + 2 * member], 1, 'NX', 'EX', ARGV[3]) then
    answers[member] = 1
    local reservation = KEYS[5 + 2 * member]
    local held = tonumber(redis.call('GET', reservation) or 0)
    if held ~= 0 then
      redis.call('DEL', reservation)
      redis.call('ZREM', KEYS[3], lease(KEYS[1], KEYS[2], reservation))
      reserved = reserved + held
    end
    billed = billed + tonumber(ARGV[at])
    add_usage(usage, fields, at + 2, pairs)
    add_tagged(tagged, tag_order, tag, 'billed_tokens', ARGV[at])
    add_tagged_usage(tagged, tag_order, tag, at + 2, pairs)
  end
  at = at + 3 + 2 * pairs
end
for i = 1, 2 do
  if reserved ~= 0 then redis.call('HINCRBY', KEYS[i], 'reserved_tokens', -reserved) end
  if billed ~= 0 then redis.call('HINCRBY', KEYS[i], 'billed_tokens', billed) end
end
write_usage(KEYS[1], usage, fields)
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[2])
if #tag_order > 0 then
  write_tags(KEYS[4], KEYS[5], tonumber(ARGV[6]), tagged, tag_order)
  redis.call('EXPIRE', KEYS[4], ARGV[1])
  redis.call('EXPIRE', KEYS[5], ARGV[1])
end
return answers
