-- Shared by every script of a shared semantic cache. KEYS: [1] the
-- namespace's metadata hash, [2] the event counter, [3] the event stream,
-- [4] the index of entries (sorted set, score = the entry's event number).
-- ARGV[1] is the namespace's key base: entry and tombstone keys are derived
-- from it and share the hash tag of KEYS, so every script runs on one slot.
local base = ARGV[1]

local function num(v)
  if type(v) ~= 'string' then return 0 end
  return tonumber(v) or 0
end

-- The highest event number the stream's recent events or the index hold.
local function recount()
  local n = 0
  for _, e in ipairs(redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 64)) do
    local f = e[2]
    for i = 1, #f - 1, 2 do
      if f[i] == 's' and (tonumber(f[i + 1]) or 0) > n then n = tonumber(f[i + 1]) end
    end
  end
  local top = redis.call('ZRANGE', KEYS[4], -1, -1, 'WITHSCORES')
  if #top == 2 and (tonumber(top[2]) or 0) > n then n = tonumber(top[2]) end
  return n
end

-- Structural keys that another program overwrote with the wrong type are
-- removed; a counter that was removed or garbled starts again from the
-- highest number still in use, so numbers never go back. The number of
-- keys repaired.
local function repair()
  local n = 0
  local want = {[2] = 'string', [3] = 'stream', [4] = 'zset'}
  for i, t in pairs(want) do
    local got = redis.call('TYPE', KEYS[i])['ok']
    if got ~= 'none' and got ~= t then
      redis.call('DEL', KEYS[i])
      n = n + 1
    end
  end
  local s = redis.call('GET', KEYS[2])
  if s and not tonumber(s) then
    redis.call('DEL', KEYS[2])
    s = false
    n = n + 1
  end
  if not s then
    local top = recount()
    if top > 0 then
      redis.call('SET', KEYS[2], top)
      n = n + 1
    end
  end
  return n
end

local function meta(field)
  local v = redis.pcall('HGET', KEYS[1], field)
  if type(v) ~= 'string' then return false end
  return v
end

-- The newest invalidation (its event number; 0: none) covering an entry
-- with these keys, leaving out those made by instance `me`. Tombstones and
-- the metadata's `cleared` hold "<event> <instance>".
local function tomb(id, phash, tags, me)
  local t = 0
  local function seen(v)
    if type(v) ~= 'string' then return end
    local s, who = string.match(v, '^(%d+) (.*)$')
    s = tonumber(s)
    if s and who ~= me and s > t then t = s end
  end
  seen(redis.pcall('GET', base .. 'x:' .. id))
  seen(redis.pcall('GET', base .. 'xp:' .. phash))
  for th in string.gmatch(tags, '%S+') do seen(redis.pcall('GET', base .. 'xt:' .. th)) end
  seen(meta('cleared'))
  return t
end

-- An entry's stored fields {blob, event, partition hash, tag hashes}, or
-- nil when absent, or false when the key holds something else.
local function entry(id)
  local f = redis.pcall('HMGET', base .. 'e:' .. id, 'd', 's', 'p', 't')
  if type(f) ~= 'table' or f.err then return false end
  if not f[1] then return nil end
  if type(f[2]) ~= 'string' or type(f[3]) ~= 'string' or type(f[4]) ~= 'string' then
    return false
  end
  return f
end

local function last_log_id()
  local last = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)
  if #last == 0 then return '0-0' end
  return last[1][1]
end
