-- ARGV: base, after (stream id), count.
-- {epoch, event counter, server ms, events after `after`, keys repaired}.
local repaired = repair()
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local events = redis.call('XRANGE', KEYS[3], '(' .. ARGV[2], '+', 'COUNT', ARGV[3])
return {meta('epoch') or '', num(redis.call('GET', KEYS[2])), ms, events, repaired}
