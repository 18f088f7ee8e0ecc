-- ARGV: base, identity, dim, format, candidate epoch.
-- The namespace's metadata (created by the first process) and the position
-- of the stream now: {'ok', identity, dim, format, epoch, seq, last id}.
local repaired = repair()
local t = redis.call('TYPE', KEYS[1])['ok']
if t ~= 'none' and t ~= 'hash' then
  redis.call('DEL', KEYS[1])
  repaired = repaired + 1
end
if not meta('identity') or not meta('dim') or not meta('format') or not meta('epoch') then
  redis.call('HSET', KEYS[1], 'identity', ARGV[2], 'dim', ARGV[3], 'format', ARGV[4],
    'epoch', ARGV[5])
end
return {'ok', meta('identity'), meta('dim'), meta('format'), meta('epoch'),
  num(redis.call('GET', KEYS[2])), last_log_id(), repaired}
