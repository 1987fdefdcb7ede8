-- One decision of the shared circuit breaker of requests to one target.
--
-- KEYS[1]: the breaker hash (mas_sync:breaker:{target}). Its fields:
--   'failures'      consecutive failed requests;
--   'opened_until'  when the cool-down ends, in ms on Redis' clock (present
--                   while the breaker is open or half-open);
--   'trial', 'trial_until'  the token of the one trial request under way,
--                   and when its turn lapses (in ms), should its caller die.
-- The hash expires when nobody touched it for ARGV[4] (admit) or ARGV[6]
-- (record) ms past its cool-down or trial: idle state is forgotten.
--
-- ARGV[1] = 'admit': may a request be sent?
--   ARGV[2]: a token for this call; ARGV[3]: the trial's turn in ms;
--   ARGV[4]: ms to keep idle state.
--   Returns {'closed', 0, failures} or {'trial', 0, failures}: send it (a
--   trial holds the token); {'open', ms left, failures}: the cool-down runs;
--   {'busy', ms left, failures}: another call's trial is under way.
--
-- ARGV[1] = 'record': the outcome of a request that was sent.
--   ARGV[2]: its token if it was the trial, else ''; ARGV[3]: 'ok', 'fail' or
--   'none' (neither: the caller's own fault); ARGV[4]: failures that open the
--   breaker; ARGV[5]: the cool-down in ms; ARGV[6]: ms to keep idle state.
--   Returns {'closed', 0, failures}, {'opened', cool-down ms, failures} (this
--   outcome opened it) or {'open', ms left, failures}.

if redis.replicate_commands then redis.replicate_commands() end  -- TIME, then writes (Redis < 5)

local key = KEYS[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local f = redis.call('HMGET', key, 'failures', 'opened_until', 'trial', 'trial_until')
local failures = tonumber(f[1]) or 0
local opened_until = tonumber(f[2])
local trial = f[3]
local trial_until = tonumber(f[4]) or 0

local function ms(x) return string.format('%.0f', x) end

if ARGV[1] == 'admit' then
  if not opened_until then return {'closed', 0, failures} end
  if now < opened_until then return {'open', opened_until - now, failures} end
  if trial and trial_until > now then return {'busy', trial_until - now, failures} end
  local turn = tonumber(ARGV[3])
  redis.call('HSET', key, 'trial', ARGV[2], 'trial_until', ms(now + turn))
  redis.call('PEXPIRE', key, ms(turn + tonumber(ARGV[4])))
  return {'trial', 0, failures}
end

local is_trial = ARGV[2] ~= '' and trial == ARGV[2]
local outcome = ARGV[3]
if outcome == 'ok' then
  if is_trial or not opened_until then
    redis.call('DEL', key)
    return {'closed', 0, 0}
  end
elseif outcome == 'fail' then
  if is_trial or not opened_until then
    failures = failures + 1
    if is_trial or failures >= tonumber(ARGV[4]) then
      local cooldown = tonumber(ARGV[5])
      redis.call('HSET', key, 'failures', failures, 'opened_until', ms(now + cooldown))
      redis.call('HDEL', key, 'trial', 'trial_until')
      redis.call('PEXPIRE', key, ms(cooldown + tonumber(ARGV[6])))
      return {'opened', cooldown, failures}
    end
    redis.call('HSET', key, 'failures', failures)
    redis.call('PEXPIRE', key, ARGV[6])
    return {'closed', 0, failures}
  end
elseif is_trial then
  redis.call('HDEL', key, 'trial', 'trial_until')
end
-- A late outcome of a call sent before the breaker opened changes nothing.
if not opened_until then return {'closed', 0, failures} end
return {'open', math.max(0, opened_until - now), failures}
