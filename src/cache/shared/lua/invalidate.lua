-- ARGV: base, instance, kind ('inv', 'part', 'tag', 'clear'), stream max
-- length, channel, wall microseconds, tombstone ttl ms (0: none), target (entry id,
-- partition hash or tag hash), partition, prompt or tag.
-- Leaves a tombstone ("<event> <instance>"), so that no write of another
-- instance that had not seen this event is accepted later.
local repaired = repair()
local seq = redis.call('INCR', KEYS[2])
local kind, target, ttl = ARGV[3], ARGV[8], tonumber(ARGV[7])
local stone = seq .. ' ' .. ARGV[2]
local function mark(k)
  if ttl > 0 then redis.call('SET', k, stone, 'PX', ttl) else redis.call('SET', k, stone) end
end
if kind == 'inv' then
  redis.call('DEL', base .. 'e:' .. target)
  redis.call('ZREM', KEYS[4], target)
  mark(base .. 'x:' .. target)
elseif kind == 'part' then
  mark(base .. 'xp:' .. target)
elseif kind == 'tag' then
  mark(base .. 'xt:' .. target)
else
  redis.call('HSET', KEYS[1], 'cleared', stone)
end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', 's', seq, 'o', ARGV[2], 'k', kind,
  'w', ARGV[6], 'p', ARGV[9], 'q', ARGV[10])
redis.call('PUBLISH', ARGV[5], seq)
return {seq, repaired}
