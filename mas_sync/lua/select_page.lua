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
-- The ACTIVE hashes that match (or that Lua cannot read): their keys, fields
-- (id, capabilities, metadata, status, delivery) and whether Lua reads them.
local keys, fields, readable = {}, {}, {}
for _, key in ipairs(page[2]) do
  if #key > 6 and not string.find(key, ':', 7, true) then
    local f = redis.call('HMGET', key, 'id', 'capabilities', 'metadata', 'status', 'delivery')
    if f[4] == 'ACTIVE' then
      local id = f[1] or ''
      local caps = decode_caps(f[2] or '[]')
      -- key == 'agent:' .. id, without making that string.
      local ok = #key == #id + 6 and string.find(key, id, 7, true) == 7 and caps
        and meta_ok(f[3] or '{}')
      local match = any or not ok
      if not match then
        for _, cap in ipairs(caps) do
          if want[cap] then match = true break end
        end
      end
      if match then
        local n = #keys + 1
        keys[n], fields[n], readable[n] = key, f, ok
      end
    end
  end
end
-- Their heartbeat keys, checked in batches: one EXISTS counts a whole batch,
-- and only a batch where some heartbeat is missing is checked key by key.
local beating = {}
local BATCH = 500
for first = 1, #keys, BATCH do
  local last = math.min(first + BATCH - 1, #keys)
  local beats = {}
  for i = first, last do beats[#beats + 1] = keys[i] .. ARGV[3] end
  local all = redis.call('EXISTS', unpack(beats)) == #beats
  for i = first, last do
    beating[i] = all or redis.call('EXISTS', beats[i - first + 1]) == 1
  end
end
local live, delivery, count, unreadable = {}, {}, {}, false
for i = 1, #keys do
  if beating[i] then
    local n = #live + 1
    live[n], delivery[n], count[n] = i, 'pubsub', 1
    if fields[i][5] == 'reliable' then delivery[n], count[n] = 'reliable', instances(keys[i]) end
    if not readable[i] then unreadable = true end
  end
end
if ARGV[4] == 'page' and not unreadable then
  local good = {}
  for n, i in ipairs(live) do
    local f = fields[i]
    local id = f[1]
    -- An id that needs no escaping goes as it is (cjson's encoding otherwise).
    local quoted = string.find(id, '[%c"\\]') and cjson.encode(id) or '"' .. id .. '"'
    good[n] = '[' .. quoted .. ',' .. (f[2] or '[]') .. ',' .. (f[3] or '{}') .. ',"'
      .. delivery[n] .. '",' .. count[n] .. ']'
  end
  return {page[1], 'page', #good, '[' .. table.concat(good, ',') .. ']'}
end
local entries = {page[1], 'entries'}
for n, i in ipairs(live) do
  local f, m = fields[i], #entries
  entries[m + 1], entries[m + 2] = keys[i], f[1] or ''
  entries[m + 3], entries[m + 4] = f[2] or '[]', f[3] or '{}'
  entries[m + 5], entries[m + 6] = delivery[n], tostring(count[n])
end
return entries
