-- ARGV: base, instance, "<observed event> <its epoch>", stream max length, max shared
-- entries (0: no bound), channel, wall microseconds, n, then n x (id, blob, partition
-- hash, tag hashes, ttl ms (0: none)).
-- An entry that another instance's invalidation newer than `observed`
-- covers is refused: a write delayed in a queue cannot bring back what was
-- invalidated elsewhere.
local repaired = repair()
-- A change made in another epoch (before Redis restarted empty, or a
-- failover lost the namespace) saw none of this epoch's invalidations.
local observed, epoch = string.match(ARGV[3], '^(%d+) (.*)$')
observed = tonumber(observed) or 0
if epoch ~= meta('epoch') then observed = 0 end
local accepted, rejected, seq = 0, 0, 0
for i = 0, tonumber(ARGV[8]) - 1 do
  local o = 9 + i * 5
  local id, blob, ph, tags, ttl = ARGV[o], ARGV[o + 1], ARGV[o + 2], ARGV[o + 3], tonumber(ARGV[o + 4])
  if tomb(id, ph, tags, ARGV[2]) > observed then
    rejected = rejected + 1
  else
    seq = redis.call('INCR', KEYS[2])
    local k = base .. 'e:' .. id
    redis.call('DEL', k)
    redis.call('HSET', k, 'd', blob, 's', seq, 'p', ph, 't', tags)
    if ttl > 0 then redis.call('PEXPIRE', k, ttl) end
    redis.call('ZADD', KEYS[4], seq, id)
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', 's', seq, 'o', ARGV[2], 'k', 'set',
      'w', ARGV[7], 'd', blob)
    accepted = accepted + 1
  end
end
-- The oldest index members whose entry expired, a few per call.
for _, id in ipairs(redis.call('ZRANGE', KEYS[4], 0, 1)) do
  if redis.call('EXISTS', base .. 'e:' .. id) == 0 then redis.call('ZREM', KEYS[4], id) end
end
local cap = tonumber(ARGV[5])
if cap > 0 then
  local n = redis.call('ZCARD', KEYS[4])
  if n > cap then
    for _, id in ipairs(redis.call('ZRANGE', KEYS[4], 0, n - cap - 1)) do
      redis.call('DEL', base .. 'e:' .. id)
    end
    redis.call('ZREMRANGEBYRANK', KEYS[4], 0, n - cap - 1)
  end
end
if accepted > 0 then redis.call('PUBLISH', ARGV[6], seq) end
return {accepted, rejected, seq, repaired}
