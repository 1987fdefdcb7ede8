-- The registration of one instance of a reliable agent: it joins a live
-- registration of the id, or registers the id anew.
--
-- Each instance's liveness lives in the hash, so that one script on one key
-- judges it on a cluster too: a field 'instance:{name}' holding
-- '{expiry in ms} {token}', the expiry on Redis's own clock (TIME). Entries
-- past their expiry are dropped on the way.
--
-- KEYS[1]: the registration hash.
-- KEYS[2]: the heartbeat key (one server only; a cluster sets it apart).
-- ARGV[1]: the token of this instance.
-- ARGV[2]: '1' to take over: replace a live entry of this instance's name,
--          or a live pub/sub registration.
-- ARGV[3]: the heartbeat TTL in ms (also the life of the entry).
-- ARGV[4]: '1' when the heartbeat key exists (a cluster reads it first;
--          ignored when KEYS[2] is given).
-- ARGV[5]: the field of this instance, 'instance:{name}'.
-- ARGV[6]: the heartbeat value.
-- ARGV[7]: the system channel ('' : the caller announces the registration).
-- ARGV[8]: the REGISTER event.
-- ARGV[9]: ACTIVE.
-- ARGV[10:]: the fields and values of a new hash.
--
-- Returns {1, 'new'} (registered anew and announced), {1, 'joined'} (a live
-- reliable registration: its shared fields are left as they are, nothing
-- announced), {0, 'pubsub', PTTL of the heartbeat} (a live pub/sub
-- registration holds the id) or {0, 'instance', ms the entry has left} (this
-- instance's name is live with another token). Nothing is written when
-- refused.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function parse(value)
  local expiry, token = string.match(value or '', '^(%d+) (.*)$')
  if expiry then return tonumber(expiry), token end
end
local beating = ARGV[4] == '1'
if KEYS[2] then beating = redis.call('EXISTS', KEYS[2]) == 1 end
local joining = false
if redis.call('TYPE', KEYS[1]).ok == 'hash' then
  if redis.call('HGET', KEYS[1], 'delivery') ~= 'reliable' then
    if beating and ARGV[2] ~= '1' then
      return {0, 'pubsub', KEYS[2] and redis.call('PTTL', KEYS[2]) or -2}
    end
  else
    local expiry, token = parse(redis.call('HGET', KEYS[1], ARGV[5]))
    if expiry and expiry > now and token ~= ARGV[1] and ARGV[2] ~= '1' then
      return {0, 'instance', expiry - now}
    end
    local all, live = redis.call('HGETALL', KEYS[1]), 0
    for i = 1, #all, 2 do
      local name = all[i]
      if name ~= ARGV[5] and string.sub(name, 1, 9) == 'instance:' then
        local other = parse(all[i + 1])
        if other and other > now then live = live + 1 else redis.call('HDEL', KEYS[1], name) end
      end
    end
    joining = beating or live > 0
  end
end
local entry = string.format('%.0f', now + tonumber(ARGV[3])) .. ' ' .. ARGV[1]
if joining then
  redis.call('HSET', KEYS[1], ARGV[5], entry)
  redis.call('PERSIST', KEYS[1])
  if redis.call('HGET', KEYS[1], 'status') ~= ARGV[9] then
    redis.call('HSET', KEYS[1], 'status', ARGV[9])
  end
else
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], unpack(ARGV, 10))
  redis.call('HSET', KEYS[1], ARGV[5], entry)
end
if KEYS[2] then redis.call('SET', KEYS[2], ARGV[6], 'PX', ARGV[3]) end
if joining then return {1, 'joined'} end
if ARGV[7] ~= '' then redis.call('PUBLISH', ARGV[7], ARGV[8]) end
return {1, 'new'}
