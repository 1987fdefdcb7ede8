-- Trim a reliable agent's stream to about ARGV[2] entries, never dropping an
-- entry that its group has not acknowledged.
--
-- The oldest entry not acknowledged is the group's first pending entry, or
-- else the first entry after its last-delivered id. Only entries before it
-- are ever removed, the oldest first, and no more than XLEN - ARGV[2].
--
-- KEYS[1]: the stream.
-- ARGV[1]: the consumer group.
-- ARGV[2]: the length to keep.
--
-- Returns the number of entries removed.

local excess = redis.call('XLEN', KEYS[1]) - tonumber(ARGV[2])
if excess <= 0 then return 0 end
local last
for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local fields = {}
  for i = 1, #group, 2 do fields[group[i]] = group[i + 1] end
  if fields['name'] == ARGV[1] then last = fields['last-delivered-id'] end
end
if not last then return 0 end
local bound = last
local pending = redis.call('XPENDING', KEYS[1], ARGV[1])
if pending[1] > 0 then bound = '(' .. pending[2] end
-- One entry more than the excess: the first to keep, when it is acknowledged.
local old = redis.call('XRANGE', KEYS[1], '-', bound, 'COUNT', excess + 1)
if #old == 0 then return 0 end
local keep
if #old == excess + 1 then
  keep = old[#old][1]
elseif pending[1] > 0 then
  keep = pending[2]
else
  local ms, seq = string.match(old[#old][1], '^(%d+)-(%d+)$')
  keep = ms .. '-' .. string.format('%.0f', tonumber(seq) + 1)
end
return redis.call('XTRIM', KEYS[1], 'MINID', keep)
