-- The prelude of admit.lua and settle.lua (run before each, see RedisBackend.script): usage
-- counts summed over a batch, the name of a reservation's lease, and usage by tag.
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

-- Adds amount to tag's field in tagged (tag -> {fields, amounts}); order keeps the tags in
-- the order first seen. Nothing for 0: a tag is written only with counts.
local function add_tagged(tagged, order, tag, field, amount)
  amount = tonumber(amount)
  if amount == 0 then return end
  local counts = tagged[tag]
  if counts == nil then
    counts = {fields = {}, amounts = {}}
    tagged[tag] = counts
    order[#order + 1] = tag
  end
  if counts.amounts[field] == nil then
    counts.amounts[field] = 0
    counts.fields[#counts.fields + 1] = field
  end
  counts.amounts[field] = counts.amounts[field] + amount
end

-- Adds the n usage field and amount pairs of ARGV from ARGV[first] to tag's in tagged.
local function add_tagged_usage(tagged, order, tag, first, n)
  for p = first, first + 2 * n - 2, 2 do add_tagged(tagged, order, tag, ARGV[p], ARGV[p + 1]) end
end

-- Writes the summed tag counts to the day's tag hash (fields '<tag>|<field>'); set holds
-- the day's tags counted toward the bound, most of them: a tag past it counts as 'other'
-- ('untagged' and 'other' are never counted; gateway/tags.py's kept is the same rule).
local function write_tags(hash, set, most, tagged, order)
  for _, tag in ipairs(order) do
    local under = tag
    if tag ~= 'untagged' and tag ~= 'other' and redis.call('SISMEMBER', set, tag) == 0 then
      if redis.call('SCARD', set) < most then
        redis.call('SADD', set, tag)
      else
        under = 'other'
      end
    end
    local counts = tagged[tag]
    for _, field in ipairs(counts.fields) do
      redis.call('HINCRBY', hash, under .. '|' .. field, counts.amounts[field])
    end
  end
end
