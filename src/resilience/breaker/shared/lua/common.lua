-- Shared prelude of every breaker script (the Rust side prepends it).
-- KEYS[1] state hash, KEYS[2] window (count: a string of one byte per call;
-- time: a hash of per-second counters), KEYS[3] half-open leases (a sorted
-- set: lease id -> expiry in ms). All three carry the breaker name in one
-- hash tag, so a script touches a single Cluster slot.
-- ARGV[1..14] the configuration, the name and the event channel; the
-- script's own arguments follow from ARGV[15]. Times are integer
-- milliseconds of the server clock (TIME), so hosts need not agree on time.
local S, W, L = KEYS[1], KEYS[2], KEYS[3]
local FT = tonumber(ARGV[1])
local ST = tonumber(ARGV[2])
local HMAX = tonumber(ARGV[3])
local MINC = tonumber(ARGV[4])
local WTYPE = ARGV[5] -- 'count', 'time', or '' (no window)
local WSIZE = tonumber(ARGV[6])
local FRATE = tonumber(ARGV[7]) -- nil when unset
local SRATE = tonumber(ARGV[8])
local REC0 = tonumber(ARGV[9])
local RECMAX = tonumber(ARGV[10])
local MULT = tonumber(ARGV[11])
local TTL = tonumber(ARGV[12])
local NAME = ARGV[13]
local CHANNEL = ARGV[14]

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local FIELDS = {'gen', 'seq', 'epoch', 'state', 'open_until', 'recovery', 'entered',
                'consec', 'ho_succ', 'wnext', 'wlen', 'wc', 'wf', 'ws', 'wt0'}
local st = {}
local visible = false -- a change other processes must hear about

local raw = redis.call('HMGET', S, unpack(FIELDS))
if not raw[1] then
  st = {gen = tonumber(t[1]) * 1000000 + tonumber(t[2]), seq = 0, epoch = 0,
        state = 'closed', open_until = now, recovery = REC0, entered = now,
        consec = 0, ho_succ = 0, wnext = 0, wlen = 0, wc = 0, wf = 0, ws = 0,
        wt0 = math.floor(now / 1000)}
  redis.call('DEL', W, L)
else
  for i, f in ipairs(FIELDS) do
    if f == 'state' then
      st[f] = raw[i]
    else
      st[f] = tonumber(raw[i])
      if st[f] == nil then
        return redis.error_reply('ERR breaker state ' .. S .. ' field ' .. f ..
                                 ' holds ' .. tostring(raw[i]) .. ', not a number')
      end
    end
  end
end

local function clear_window()
  redis.call('DEL', W)
  st.wnext, st.wlen, st.wc, st.wf, st.ws = 0, 0, 0, 0, 0
  st.wt0 = math.floor(now / 1000)
end

-- Drops the per-second buckets that left a time window.
local function evict()
  if WTYPE ~= 'time' then return end
  local cutoff = math.floor(now / 1000) - WSIZE + 1
  if st.wt0 >= cutoff then return end
  if cutoff - st.wt0 >= WSIZE then
    clear_window()
  else
    for s = st.wt0, cutoff - 1 do
      local v = redis.call('HMGET', W, 'c' .. s, 'f' .. s, 's' .. s)
      st.wc = st.wc - (tonumber(v[1]) or 0)
      st.wf = st.wf - (tonumber(v[2]) or 0)
      st.ws = st.ws - (tonumber(v[3]) or 0)
      redis.call('HDEL', W, 'c' .. s, 'f' .. s, 's' .. s)
    end
  end
  st.wt0 = cutoff
end
evict()

local function enter(to)
  st.state = to
  st.epoch = st.epoch + 1
  st.entered = now
  st.ho_succ = 0
  redis.call('DEL', L)
  if to == 'open' then
    st.open_until = now + st.recovery
  elseif to == 'closed' then
    st.recovery = REC0
    st.consec = 0
    clear_window()
  end
  visible = true
end

local function backoff()
  local grown = math.floor(st.recovery * MULT + 0.5)
  if RECMAX and grown > RECMAX then grown = RECMAX end
  st.recovery = grown
end

local function free_leases()
  if st.state ~= 'half_open' then return 0 end
  redis.call('ZREMRANGEBYSCORE', L, '-inf', now)
  local n = HMAX - redis.call('ZCARD', L)
  if n < 0 then return 0 end
  return n
end

local function snapshot(granted)
  local remaining = 0
  if st.state == 'open' then
    remaining = math.max(st.open_until - now, 0)
  elseif st.state == 'forced_open' then
    remaining = st.recovery
  end
  local free, lease_wait = free_leases(), 0
  if st.state == 'half_open' and free == 0 then
    local first = redis.call('ZRANGE', L, 0, 0, 'WITHSCORES')
    if first[2] then lease_wait = math.max(tonumber(first[2]) - now, 0) end
  end
  local out = {}
  for _, v in ipairs({st.gen, st.seq, st.epoch}) do out[#out + 1] = string.format('%d', v) end
  out[#out + 1] = st.state
  for _, v in ipairs({remaining, st.recovery, st.consec, st.ho_succ, free,
                      st.wc, st.wf, st.ws, granted, now - st.entered, lease_wait}) do
    out[#out + 1] = string.format('%d', v)
  end
  return out
end

-- Saves the state, refreshes the expiry of every key, and publishes the
-- snapshot when another process must change its decisions.
local function finish(granted)
  st.seq = st.seq + 1
  local args = {}
  for _, f in ipairs(FIELDS) do
    args[#args + 1] = f
    if f == 'state' then
      args[#args + 1] = st[f]
    else
      args[#args + 1] = string.format('%d', st[f])
    end
  end
  redis.call('HSET', S, unpack(args))
  redis.call('PEXPIRE', S, TTL)
  redis.call('PEXPIRE', W, TTL)
  redis.call('PEXPIRE', L, TTL)
  local snap = snapshot(granted)
  if visible then
    redis.call('PUBLISH', CHANNEL, table.concat(snap, '|') .. '|' .. NAME)
  end
  return snap
end
