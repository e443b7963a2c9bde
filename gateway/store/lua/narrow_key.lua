-- Narrow a key's validity, never widen it: set when it was revoked (once), and bring its
-- expiry forward (never back). Concurrent revocations and rotations cannot undo each other.
-- Times are in seconds since the epoch.
-- KEYS: 1 the key's state hash
-- ARGV: 1 revoked at ('' to leave), 2 expires at ('' to leave)
if ARGV[1] ~= '' then redis.call('HSETNX', KEYS[1], 'revoked', ARGV[1]) end
if ARGV[2] ~= '' then
  local current = tonumber(redis.call('HGET', KEYS[1], 'expires'))
  if not current or tonumber(ARGV[2]) < current then
    redis.call('HSET', KEYS[1], 'expires', ARGV[2])
  end
end
return 1
