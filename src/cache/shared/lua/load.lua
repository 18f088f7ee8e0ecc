-- ARGV: base, after (index score), count, sweep (1: delete what is dead).
-- One page of the live entries in event order:
-- {epoch, last score, members scanned, unreadable, removed, {blob, pttl, ...}}.
-- Expired members leave the index; tombstoned entries are skipped, and
-- deleted when sweeping.
repair()
local ids = redis.call('ZRANGEBYSCORE', KEYS[4], '(' .. ARGV[2], '+inf', 'WITHSCORES', 'LIMIT', 0,
  tonumber(ARGV[3]))
local out, last, scanned, bad, removed = {}, ARGV[2], 0, 0, 0
for i = 1, #ids, 2 do
  local id = ids[i]
  last = ids[i + 1]
  scanned = scanned + 1
  local f = entry(id)
  if f == nil then
    redis.call('ZREM', KEYS[4], id)
    removed = removed + 1
  elseif f == false then
    bad = bad + 1
    if ARGV[4] == '1' then
      redis.call('DEL', base .. 'e:' .. id)
      redis.call('ZREM', KEYS[4], id)
      removed = removed + 1
    end
  elseif tomb(id, f[3], f[4], '') > num(f[2]) then
    if ARGV[4] == '1' then
      redis.call('DEL', base .. 'e:' .. id)
      redis.call('ZREM', KEYS[4], id)
      removed = removed + 1
    end
  elseif ARGV[4] ~= '1' then
    table.insert(out, f[1])
    table.insert(out, redis.call('PTTL', base .. 'e:' .. id))
  end
end
return {meta('epoch') or '', last, scanned, bad, removed, out}
