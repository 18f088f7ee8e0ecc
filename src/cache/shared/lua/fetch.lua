-- ARGV: base, entry id. {blob, pttl} of a live, not invalidated entry, or {}.
local f = entry(ARGV[2])
if not f then return {} end
if tomb(ARGV[2], f[3], f[4], '') > num(f[2]) then return {} end
return {f[1], redis.call('PTTL', base .. 'e:' .. ARGV[2])}
