-- One heartbeat of the run holding a token.
--
-- The hash loses any TTL that a prune pass gave it while the heartbeat was
-- missing.
--
-- KEYS[1]: the registration hash.
-- KEYS[2]: the heartbeat key (one server only; a cluster sets it apart).
-- ARGV[1]: the token.
-- ARGV[2]: the heartbeat TTL in ms.
-- ARGV[3]: the heartbeat value.
-- ARGV[4]: ACTIVE.
--
-- Returns 'gone' (no hash: register again), 'taken' (another token holds it:
-- nothing written), 'reactivated' (it was marked otherwise) or 'ok'.

local f = redis.call('HMGET', KEYS[1], 'token', 'status')
if redis.call('EXISTS', KEYS[1]) == 0 then return 'gone' end
if f[1] ~= ARGV[1] then return 'taken' end
if KEYS[2] then redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[2]) end
redis.call('PERSIST', KEYS[1])
if f[2] ~= ARGV[4] then
  redis.call('HSET', KEYS[1], 'status', ARGV[4])
  return 'reactivated'
end
return 'ok'
