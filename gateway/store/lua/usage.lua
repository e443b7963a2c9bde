-- The prelude of admit.lua and settle.lua (run before each, see RedisBackend.script): usage
-- counts summed over a batch, and the name of a reservation's lease.
-- Adds the n usage field and amount pairs of ARGV from ARGV[first] to usage; fields keeps
-- the fields in the order first seen.
local function add_usage(usage, fields, first, n)
  for p = first, first + 2 * n - 2, 2 do
    local field = ARGV[p]
    if usage[field] == nil then
      usage[field] = 0
      fields[#fields + 1] = field
    end
    usage[field] = usage[field] + tonumber(ARGV[p + 1])
  end
end

-- Adds the summed usage to the day hash.
local function write_usage(day, usage, fields)
  for _, field in ipairs(fields) do
    redis.call('HINCRBY', day, field, usage[field])
  end
end


-- A reservation's member in its team's leases: the day and month hashes it is counted in,
-- and its key, one per line.
local function lease(day, month, reservation)
  return day .. '\n' .. month .. '\n' .. reservation
end
