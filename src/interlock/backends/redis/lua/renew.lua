-- renew: extend the leases of one process's holders and queued waiters on this primitive.
-- KEYS: see prelude.lua
-- ARGV[6] lease ttl ms, ARGV[7..] request ids
-- Reply: the ids that are no longer known (expired, reclaimed, or lost by the server)
local ttl = tonumber(ARGV[6])
purge()
local missing = {}
for i = 7, #ARGV do
  local id = ARGV[i]
  if redis.call('ZSCORE', X, id) then
    redis.call('ZADD', X, now + ttl, id)
  else
    missing[#missing + 1] = id
  end
end
touch()
finish()
return missing
