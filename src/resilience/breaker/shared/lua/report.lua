-- Applies one process's batch of closed-state outcomes, then decides whether
-- the circuit opens. ARGV[15] the epoch the calls were admitted in; [16]
-- failures before the batch's first success; [17] 1 if the batch holds a
-- success; [18] the longest run of failures from the first success on; [19]
-- failures after the last success; [20] the calls' codes, oldest first, for a
-- count window ('0' ok, '1' failed, '2' slow, '3' failed and slow); [21..23]
-- calls, failures and slow calls, for a time window. An empty batch only
-- reads the state (a process catching up after a restart or an outage).
local epoch = tonumber(ARGV[15])
local calls = tonumber(ARGV[21])
if calls > 0 and st.state == 'closed' and epoch == st.epoch then
  local lead, has_success = tonumber(ARGV[16]), ARGV[17] == '1'
  local max_run, trail = tonumber(ARGV[18]), tonumber(ARGV[19])
  local open = false
  if has_success then
    open = st.consec + lead >= FT or max_run >= FT
    st.consec = trail
  else
    st.consec = st.consec + lead
  end
  if WTYPE == 'count' then
    local codes = ARGV[20]
    local k = #codes
    local first = st.wnext
    local old = redis.call('GETRANGE', W, first, first + k - 1)
    if first + k > WSIZE then
      old = string.sub(old, 1, WSIZE - first) .. redis.call('GETRANGE', W, 0, first + k - WSIZE - 1)
    end
    for i = 1, k do
      if st.wlen == WSIZE then
        local b = (string.byte(old, i) or 48) - 48
        st.wc = st.wc - 1
        st.wf = st.wf - b % 2
        st.ws = st.ws - math.floor(b / 2)
      else
        st.wlen = st.wlen + 1
      end
      local b = string.byte(codes, i) - 48
      st.wc = st.wc + 1
      st.wf = st.wf + b % 2
      st.ws = st.ws + math.floor(b / 2)
    end
    if first + k > WSIZE then
      redis.call('SETRANGE', W, first, string.sub(codes, 1, WSIZE - first))
      redis.call('SETRANGE', W, 0, string.sub(codes, WSIZE - first + 1))
    else
      redis.call('SETRANGE', W, first, codes)
    end
    st.wnext = (first + k) % WSIZE
  elseif WTYPE == 'time' then
    local s = math.floor(now / 1000)
    local c, f, sl = calls, tonumber(ARGV[22]), tonumber(ARGV[23])
    redis.call('HINCRBY', W, 'c' .. s, c)
    if f > 0 then redis.call('HINCRBY', W, 'f' .. s, f) end
    if sl > 0 then redis.call('HINCRBY', W, 's' .. s, sl) end
    st.wc, st.wf, st.ws = st.wc + c, st.wf + f, st.ws + sl
  end
  if not open and st.consec >= FT then open = true end
  if not open and WTYPE ~= '' and st.wc >= MINC and st.wc > 0 then
    open = (FRATE ~= nil and st.wf >= FRATE * st.wc) or (SRATE ~= nil and st.ws >= SRATE * st.wc)
  end
  if open then enter('open') end
end
return finish(0)
