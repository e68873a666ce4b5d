-- renew: extend the leases of one process's holders and queued waiters on this primitive.
-- KEYS: see prelude.lua
-- ARGV[6] unused, ARGV[7] lease ttl ms, ARGV[8..] request ids
-- Reply: the ids that are no longer known (expired, reclaimed, or lost by the server)
local ttl = tonumber(ARGV[7])
clock()
purge()
local missing = {}
for i = 8, #ARGV do
  local id = ARGV[i]
  if redis.call('ZSCORE', X, id) then
    xadd(now + ttl, id)
  else
    missing[#missing + 1] = id
  end
end
redis.call('PEXPIRE', M, ARGV[5])
redis.call('PEXPIRE', Q, ARGV[5])
redis.call('PEXPIRE', X, ARGV[5])
finish()
return missing
