-- Deregistration for a cluster, on the registration hash alone.
--
-- The caller then deletes the rest (heartbeat, state) and announces it.
--
-- KEYS[1]: the registration hash.
-- ARGV[1]: the token of the run that leaves ('' for whoever holds the id).
--
-- Returns 1 when the hash was this token's (or gone) and is now deleted.

local current = redis.call('HGET', KEYS[1], 'token')
if ARGV[1] ~= '' and current and current ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
