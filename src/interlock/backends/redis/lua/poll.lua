-- poll: re-read the state at a lease expiry (purging dead holders and waiters grants the next
-- waiters) and report on this process's queued requests.
-- KEYS: see prelude.lua
-- ARGV[6] unused, ARGV[7..] request ids
-- Reply: {next_check_ms, then per id: status, token, died} with status 1 granted, 0 queued, -1 gone
clock()
purge()
local out = {next_check()}
for i = 7, #ARGV do
  local id = ARGV[i]
  local rec = nil
  for j = 1, #sets, 2 do if sets[j] == 'h' .. id then rec = sets[j + 1] end end
  if not rec then rec = redis.call('HGET', M, 'h' .. id) end
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
