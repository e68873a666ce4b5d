-- signal: add permits to an unbounded (signalling) semaphore, then grant the head waiter(s).
-- KEYS: see prelude.lua; KEYS[4] this request's idempotency latch (a retry applies it once)
-- ARGV[6] unused, ARGV[7] permits to add, ARGV[8] latch lifetime ms
-- Reply: {1} applied | {0} already applied by an earlier attempt
local n = tonumber(ARGV[7])
if not redis.call('SET', KEYS[4], '1', 'PX', ARGV[8], 'NX') then
  return {0}
end
clock()
purge()
cap = cap + n
avail = avail + n
dirty = true
grant_head()
touch()
finish()
return {1}
