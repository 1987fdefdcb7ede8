-- The registration, checked and written at once (one server).
--
-- Mode 'new' refuses an id whose heartbeat key exists (a live registration:
-- a new run's token is never the one it holds); 'renew' refuses one held by
-- another token; 'take_over' refuses nothing.
--
-- KEYS[1]: the registration hash.
-- KEYS[2]: the heartbeat key.
-- ARGV[1]: the token of this run.
-- ARGV[2]: the mode: 'new', 'renew' or 'take_over'.
-- ARGV[3]: the heartbeat TTL in ms ('' for none).
-- ARGV[4]: the heartbeat value.
-- ARGV[5]: the system channel.
-- ARGV[6]: the REGISTER event.
-- ARGV[7:]: the fields and values of the hash.
--
-- Returns {1, 0} when written, {0, PTTL of the heartbeat} when refused.

local current = redis.call('HGET', KEYS[1], 'token')
if (ARGV[2] == 'new' and redis.call('EXISTS', KEYS[2]) == 1)
    or (ARGV[2] == 'renew' and current and current ~= ARGV[1]) then
  return {0, redis.call('PTTL', KEYS[2])}
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 7))
if ARGV[3] ~= '' then redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[3]) end
redis.call('PUBLISH', ARGV[5], ARGV[6])
return {1, 0}
