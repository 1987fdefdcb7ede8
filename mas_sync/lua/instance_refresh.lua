-- One heartbeat of one instance of a reliable agent.
--
-- Renews this instance's entry in the hash ('instance:{name}', see
-- instance_register.lua) and the heartbeat key, drops the entries of other
-- instances past their expiry, and removes any TTL a prune pass gave the hash.
--
-- KEYS[1]: the registration hash.
-- KEYS[2]: the heartbeat key (one server only; a cluster sets it apart).
-- ARGV[1]: the token of this instance.
-- ARGV[2]: the heartbeat TTL in ms (also the life of the entry).
-- ARGV[3]: the heartbeat value.
-- ARGV[4]: ACTIVE.
-- ARGV[5]: the field of this instance.
--
-- Returns 'gone' (no hash, or no entry of this instance: register again,
-- which joins a live registration), 'taken' (the entry holds another token,
-- or a registration that is not reliable replaced ours: nothing written),
-- 'reactivated' (it was marked otherwise) or 'ok'.

if redis.call('EXISTS', KEYS[1]) == 0 then return 'gone' end
local f = redis.call('HMGET', KEYS[1], 'delivery', 'status', ARGV[5])
if f[1] ~= 'reliable' then return 'taken' end
local expiry, token = string.match(f[3] or '', '^(%d+) (.*)$')
if not expiry then return 'gone' end
if token ~= ARGV[1] then return 'taken' end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local name = all[i]
  if name ~= ARGV[5] and string.sub(name, 1, 9) == 'instance:' then
    local other = tonumber(string.match(all[i + 1], '^(%d+) ') or '0')
    if other <= now then redis.call('HDEL', KEYS[1], name) end
  end
end
local expiry = string.format('%.0f', now + tonumber(ARGV[2]))
redis.call('HSET', KEYS[1], ARGV[5], expiry .. ' ' .. ARGV[1])
if KEYS[2] then redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[2]) end
redis.call('PERSIST', KEYS[1])
if f[2] ~= ARGV[4] then
  redis.call('HSET', KEYS[1], 'status', ARGV[4])
  return 'reactivated'
end
return 'ok'
