-- Settles a half-open probe. ARGV[15] the lease id, [16] the epoch it was
-- admitted in, [17] 'ok', 'fail' or 'release' (no outcome). A failed probe
-- reopens the circuit with the recovery timeout times the backoff multiplier;
-- `success_threshold` successful probes, from any process, close it.
local id, epoch, outcome = ARGV[15], tonumber(ARGV[16]), ARGV[17]
redis.call('ZREM', L, id)
if st.state == 'half_open' and epoch == st.epoch then
  visible = true
  if outcome == 'fail' then
    backoff()
    enter('open')
  elseif outcome == 'ok' then
    st.ho_succ = st.ho_succ + 1
    if st.ho_succ >= ST then enter('closed') end
  end
end
return finish(0)
