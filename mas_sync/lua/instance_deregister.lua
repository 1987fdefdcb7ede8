-- One instance of a reliable agent leaves.
--
-- Its entry ('instance:{name}', see instance_register.lua) goes; the
-- registration, its heartbeat (and the state, if asked) go, and DEREGISTER
-- is announced, only when no other live instance remains.
--
-- KEYS[1]: the registration hash.
-- KEYS[2]: the heartbeat key (one server only).
-- KEYS[3]: the state hash (one server only).
-- ARGV[1]: the token of this instance ('' for whoever holds the entry).
-- ARGV[2]: '1' to delete the state too, with the registration.
-- ARGV[3]: the system channel ('' : the caller deletes the rest and announces).
-- ARGV[4]: the DEREGISTER event.
-- ARGV[5]: the field of this instance.
--
-- Returns 1 (the registration is gone), 2 (the entry went; other instances
-- live on) or 0 (the entry or the registration is another run's: left alone).

if redis.call('EXISTS', KEYS[1]) == 1 then
  local f = redis.call('HMGET', KEYS[1], 'delivery', ARGV[5])
  if f[1] ~= 'reliable' then return 0 end
  local token = string.match(f[2] or '', '^%d+ (.*)$')
  if ARGV[1] ~= '' and token and token ~= ARGV[1] then return 0 end
  redis.call('HDEL', KEYS[1], ARGV[5])
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local all, live = redis.call('HGETALL', KEYS[1]), 0
  for i = 1, #all, 2 do
    if string.sub(all[i], 1, 9) == 'instance:' then
      local other = tonumber(string.match(all[i + 1], '^(%d+) ') or '0')
      if other > now then live = live + 1 else redis.call('HDEL', KEYS[1], all[i]) end
    end
  end
  if live > 0 then return 2 end
  redis.call('DEL', KEYS[1])
end
if ARGV[3] == '' then return 1 end
redis.call('DEL', KEYS[2])
if ARGV[2] == '1' then redis.call('DEL', KEYS[3]) end
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
