-- Remove an in-flight marker only if this holder still owns it (it may have expired and been
-- claimed by another replica since).
-- KEYS: 1 the marker; ARGV: 1 the holder id. Returns 1 if removed.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
