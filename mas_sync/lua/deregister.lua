-- Deregistration (one server).
--
-- A registration held by another token is left alone.
--
-- KEYS[1]: the registration hash.
-- KEYS[2]: the heartbeat key.
-- KEYS[3]: the state hash.
-- ARGV[1]: the token of the run that leaves ('' for whoever holds the id).
-- ARGV[2]: '1' to delete the state too.
-- ARGV[3]: the system channel.
-- ARGV[4]: the DEREGISTER event.
--
-- Returns 1 when deleted, 0 when another token holds the registration.

local current = redis.call('HGET', KEYS[1], 'token')
if ARGV[1] ~= '' and current and current ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
if ARGV[2] == '1' then redis.call('DEL', KEYS[3]) end
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
