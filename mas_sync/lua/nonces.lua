-- Record the nonces of signed messages, each once.
-- KEYS: mas_sync:nonce:{<agent>}:<nonce>, one per message (one hash tag: one slot)
-- ARGV[1]: milliseconds to remember a nonce
-- ARGV[1 + i]: the token of the i-th delivery: a stream entry's id, or what
--   the instances of a reliable agent agree on for a message of their channel;
--   '' for a delivery that can only be new.
-- Returns, per message, 1 when its nonce is new or was recorded by the same
-- token (the same stream entry, delivered again), 0 when it is a replay.

local ttl = ARGV[1]
local fresh = {}
for i, key in ipairs(KEYS) do
  local token = ARGV[i + 1]
  if redis.call('SET', key, token == '' and '1' or token, 'NX', 'PX', ttl) then
    fresh[i] = 1
  elseif token ~= '' and redis.call('GET', key) == token then
    fresh[i] = 1
  else
    fresh[i] = 0
  end
end
return fresh
