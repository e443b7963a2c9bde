-- Remove in-flight markers, each only if this holder still owns it (it may have expired and
-- been claimed by another replica since).
-- KEYS: the markers (on Redis Cluster, of one hash slot); ARGV: 1 the holder id.
-- Returns how many were removed.
local removed = 0
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then removed = removed + redis.call('DEL', key) end
end
return removed
