-- Write a team's record only if it is still the one the writer read (compare and set): the
-- writer changed what it read, so a write made meanwhile (a PATCH, a DELETE) is never undone.
-- KEYS: 1 the team's record
-- ARGV: 1 the record as the writer read it, 2 the record to write
-- Returns 1 when written, 0 when the record changed meanwhile (read it again), -1 when there
-- is no team (deleted meanwhile: nothing is written, so a write never brings a team back).
local current = redis.call('GET', KEYS[1])
if not current then return -1 end
if current ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
return 1
