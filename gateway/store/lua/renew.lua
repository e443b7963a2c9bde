-- Extend in-flight marks, each only if this holder still owns it (it may have lapsed and
-- been claimed by another replica since).
-- KEYS: the marks (on Redis Cluster, of one hash slot); ARGV: 1 the holder id, 2 the lease in ms.
-- Returns how many were extended.
local renewed = 0
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then renewed = renewed + redis.call('PEXPIRE', key, ARGV[2]) end
end
return renewed
