-- discover() on one server, one SCAN page per call.
--
-- Of the registration hashes on the page, those ACTIVE, whose heartbeat key
-- exists, and having one of the capabilities are selected, and so are those
-- ACTIVE and beating that Lua cannot read (cjson refuses a field, or the id
-- does not name the key): the client reads and judges each of those.
-- cjson is lenient (it takes 0x10, nan, bytes that are not UTF-8), so the
-- client parses strictly, and asks for the page again in mode 'entries' when
-- the document does not parse: one bad registration never spoils the others.
--
-- KEYS: none (the script scans).
-- ARGV[1]: the SCAN cursor.
-- ARGV[2]: the SCAN COUNT.
-- ARGV[3]: the suffix of heartbeat keys.
-- ARGV[4]: the mode, 'page' or 'entries'.
-- ARGV[5:]: the capabilities wanted (any, when none).
--
-- Each selected hash also gives its delivery ('reliable' when its field
-- 'delivery' says so, else 'pubsub') and its live instances: for a reliable
-- agent, its entries 'instance:{name}' whose expiry (ms, on Redis's clock:
-- TIME) is still ahead; 1 for a pub/sub agent.
--
-- Returns, in mode 'page' when every selected hash was readable,
-- {cursor, 'page', n, "[[id, capabilities, metadata, delivery, instances],
-- ...]"}: the keys never travel to the client, which parses one JSON document
-- a page. Otherwise {cursor, 'entries', key, id, capabilities, metadata,
-- delivery, instances, ...}, the fields as Redis holds them, which the client
-- parses one by one.

local want, any = {}, #ARGV == 4
for i = 5, #ARGV do want[ARGV[i]] = true end
local now
local function instances(key)
  if not now then
    local t = redis.call('TIME')
    now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  local all, live = redis.call('HGETALL', key), 0
  for i = 1, #all, 2 do
    if string.sub(all[i], 1, 9) == 'instance:' then
      local expiry = tonumber(string.match(all[i + 1], '^(%d+) ') or '0')
      if expiry > now then live = live + 1 end
    end
  end
  return live
end
-- A text decoded once a call: registrations often share their capabilities
-- and metadata.
local decoded, valid_meta = {}, {}
local function decode_caps(text)
  local caps = decoded[text]
  if caps == nil then
    local ok, value = pcall(cjson.decode, text)
    caps = ok and type(value) == 'table' and value or false
    decoded[text] = caps
  end
  return caps
end
local function meta_ok(text)
  local ok = valid_meta[text]
  if ok == nil then
    local good, value = pcall(cjson.decode, text)
    ok = good and type(value) == 'table'
    valid_meta[text] = ok
  end
  return ok
end
local page = redis.call('SCAN', ARGV[1], 'MATCH', 'agent:*', 'COUNT', ARGV[2], 'TYPE', 'hash')
-- The ACTIVE hashes that match (or that Lua cannot read): key, id,
-- capabilities, readable. Their metadata and delivery are read later, for
-- those that beat: most time goes to the fields read.
local picked = {}
for _, key in ipairs(page[2]) do
  if #key > 6 and not string.find(key, ':', 7, true) then
    local f = redis.call('HMGET', key, 'status', 'capabilities', 'id')
    if f[1] == 'ACTIVE' then
      local caps_text, id = f[2] or '[]', f[3] or ''
      local caps = decode_caps(caps_text)
      local readable = key == 'agent:' .. id and caps
      local match = any or not readable
      if not match then
        for _, cap in ipairs(caps) do
          if want[cap] then match = true break end
        end
      end
      if match then
        picked[#picked + 1] = {key, id, caps_text, readable}
      end
    end
  end
end
-- Their heartbeat keys, checked in batches: one EXISTS counts a whole batch,
-- and only a batch where some heartbeat is missing is checked key by key.
local beating = {}
local BATCH = 500
for first = 1, #picked, BATCH do
  local last = math.min(first + BATCH - 1, #picked)
  local beats = {}
  for i = first, last do beats[#beats + 1] = picked[i][1] .. ARGV[3] end
  local all = redis.call('EXISTS', unpack(beats)) == #beats
  for i = first, last do
    beating[i] = all or redis.call('EXISTS', beats[i - first + 1]) == 1
  end
end
local good, entries, unreadable = {}, {page[1], 'entries'}, false
for i, p in ipairs(picked) do
  if beating[i] then
    local key, id, caps_text, readable = p[1], p[2], p[3], p[4]
    local f = redis.call('HMGET', key, 'metadata', 'delivery')
    local meta_text = f[1] or '{}'
    local delivery, count = 'pubsub', 1
    if f[2] == 'reliable' then delivery, count = 'reliable', instances(key) end
    local n = #entries
    entries[n + 1], entries[n + 2] = key, id
    entries[n + 3], entries[n + 4] = caps_text, meta_text
    entries[n + 5], entries[n + 6] = delivery, tostring(count)
    if readable and meta_ok(meta_text) then
      good[#good + 1] = '[' .. cjson.encode(id) .. ',' .. caps_text .. ',' .. meta_text
        .. ',"' .. delivery .. '",' .. count .. ']'
    else
      unreadable = true
    end
  end
end
if ARGV[4] == 'page' and not unreadable then
  return {page[1], 'page', #good, '[' .. table.concat(good, ',') .. ']'}
end
return entries
