-- A registration judged dead: mark it INACTIVE, schedule its removal, or both.
--
-- Only if the heartbeat is still missing and the hash still holds the token
-- read when it was judged. Never creates a hash, and leaves alone a key that
-- is no longer one.
--
-- KEYS[1]: the registration hash.
-- KEYS[2]: the heartbeat key (one server only).
-- ARGV[1]: the token read when it was judged.
-- ARGV[2]: '1' marks it ARGV[4] when it is ARGV[3].
-- ARGV[3]: ACTIVE.
-- ARGV[4]: INACTIVE.
-- ARGV[5]: when not '', gives the hash a TTL of that many ms if it has none.
--
-- Returns {marked, scheduled}.

if KEYS[2] and redis.call('EXISTS', KEYS[2]) == 1 then return {0, 0} end
if redis.call('TYPE', KEYS[1]).ok ~= 'hash' then return {0, 0} end
local f = redis.call('HMGET', KEYS[1], 'token', 'status')
if (f[1] or '') ~= ARGV[1] then return {0, 0} end
local marked, scheduled = 0, 0
if ARGV[2] == '1' and f[2] == ARGV[3] then
  redis.call('HSET', KEYS[1], 'status', ARGV[4])
  marked = 1
end
if ARGV[5] ~= '' and redis.call('PTTL', KEYS[1]) == -1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  scheduled = 1
end
return {marked, scheduled}
