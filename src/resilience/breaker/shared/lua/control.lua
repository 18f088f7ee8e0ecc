-- Manual transitions for every process at once: ARGV[15] 'reset' (closed,
-- empty window, base recovery timeout), 'force_open' or 'disable'.
local op = ARGV[15]
if op == 'reset' then
  st.recovery = REC0
  enter('closed')
elseif op == 'force_open' then
  if st.state ~= 'forced_open' then enter('forced_open') end
elseif op == 'disable' then
  if st.state ~= 'disabled' then enter('disabled') end
else
  return redis.error_reply('ERR unknown breaker operation ' .. tostring(op))
end
return finish(0)
