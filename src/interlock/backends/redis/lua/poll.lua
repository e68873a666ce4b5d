-- poll: re-read the state at a holder's expiry (purging dead holders and waiters grants the next
-- waiters) and report on this process's queued requests.
-- KEYS: see prelude.lua
-- ARGV[6..] request ids
-- Reply: {next_check_ms, then per id: status, token, died} with status 1 granted, 0 queued, -1 gone
purge()
local out = {next_check()}
for i = 6, #ARGV do
  local id = ARGV[i]
  local rec = redis.call('HGET', H, id)
  if rec then
    local _, _, md, tok = parse(rec)
    out[#out + 1] = 1
    out[#out + 1] = tonumber(tok)
    out[#out + 1] = tonumber(string.sub(md, 2, 2)) or 0
  else
    if redis.call('ZSCORE', Q, id) then out[#out + 1] = 0 else out[#out + 1] = -1 end
    out[#out + 1] = 0
    out[#out + 1] = 0
  end
end
finish()
return out
