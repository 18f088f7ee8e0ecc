-- Asks for a half-open probe lease. An open circuit whose recovery timeout
-- has passed half-opens here. ARGV[15] the lease id. Returns the snapshot
-- with `granted` 1 when the lease was taken (it expires after the current
-- recovery timeout, so a probe whose process died delays recovery by at most
-- that much), 2 when the circuit is closed or disabled (a plain call), else 0.
local id = ARGV[15]
if st.state == 'open' and now >= st.open_until then
  enter('half_open')
end
local granted = 0
if st.state == 'half_open' then
  if free_leases() > 0 then
    redis.call('ZADD', L, now + st.recovery, id)
    granted = 1
    visible = true
  end
elseif st.state == 'closed' or st.state == 'disabled' then
  granted = 2
end
return finish(granted)
