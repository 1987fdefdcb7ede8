-- One message from one sender, against the receiver's rate limit (GCRA).
--
-- The key holds the sender's theoretical arrival time (TAT), in microseconds
-- on Redis's clock: when its next message would be on time at the rate. A
-- message is allowed when the TAT is at most the tolerance ahead of now (the
-- burst's room); it then moves the TAT one interval on. A refused message
-- changes nothing. The key expires when the TAT is reached: from then on, a
-- missing key and the stored one mean the same thing (a full burst).
--
-- TIME comes before the write: Redis 5 and later replicate what a script
-- wrote, not the script; older servers need replicate_commands() for it
-- (Redis 7 keeps the call, a no-op).
--
-- KEYS[1]: the rate key of one receiver and one sender.
-- ARGV[1]: the emission interval in microseconds (1 / rate), an integer >= 1.
-- ARGV[2]: the tolerance in microseconds ((burst - 1) * interval).
--
-- Returns 1 (allowed) or 0 (refused).

if redis.replicate_commands then redis.replicate_commands() end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then tat = now end
if tat - now > tolerance then return 0 end
local next_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%d', next_tat),
           'PX', math.ceil((next_tat - now) / 1000))
return 1
