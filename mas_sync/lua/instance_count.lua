-- The live instances of a reliable agent (read only).
--
-- Counts the entries 'instance:{name}' (see instance_register.lua) whose
-- expiry, on Redis's clock, is still ahead.
--
-- KEYS[1]: the registration hash.
-- ARGV: none.
--
-- Returns the count.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local all, live = redis.call('HGETALL', KEYS[1]), 0
for i = 1, #all, 2 do
  if string.sub(all[i], 1, 9) == 'instance:' then
    local expiry = tonumber(string.match(all[i + 1], '^(%d+) ') or '0')
    if expiry > now then live = live + 1 end
  end
end
return live
