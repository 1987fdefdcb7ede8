-- The registration hash alone, for a cluster.
--
-- A cluster keeps the hash and the heartbeat key in different slots, so a
-- script there touches the hash alone.
--
-- KEYS[1]: the registration hash.
-- ARGV[1]: the token.
-- ARGV[2]: the mode ('renew' checks the token).
-- ARGV[3:]: the fields and values of the hash.
--
-- Returns 1 when written.

local current = redis.call('HGET', KEYS[1], 'token')
if ARGV[2] == 'renew' and current and current ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
return 1
