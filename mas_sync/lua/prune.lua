-- Remove a registration whose heartbeat is gone, as a deregistration would.
--
-- Only if the heartbeat key is still missing (checked here on one server)
-- and the hash still holds the token read when it was judged: an agent that
-- came back, or a new registration of the id, is left alone. The state
-- ``agent.state:{id}`` is kept.
--
-- KEYS[1]: the registration hash.
-- KEYS[2]: the heartbeat key (one server only).
-- KEYS[3]: the counters hash agent:{id}:stats (one server only).
-- ARGV[1]: the token read when it was judged.
-- ARGV[2]: the system channel ('' publishes nothing: a cluster publishes apart).
-- ARGV[3]: the DEREGISTER event.
--
-- Returns 1 when removed, 0 when left alone.

if KEYS[2] and redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
if redis.call('TYPE', KEYS[1]).ok ~= 'hash' then return 0 end
if (redis.call('HGET', KEYS[1], 'token') or '') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
if KEYS[3] then redis.call('DEL', KEYS[3]) end
if ARGV[2] ~= '' then redis.call('PUBLISH', ARGV[2], ARGV[3]) end
return 1
