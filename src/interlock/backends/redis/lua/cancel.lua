-- cancel a queued request (timeout, cancellation, interrupt).
-- KEYS: see prelude.lua
-- ARGV[6] request id, ARGV[7] "k" keep a grant that raced with the cancel | "r" release it
-- Reply: {1} left the queue | {2, token, died} it was granted and is kept | {3} it was granted
--        and has been released | {0} unknown (expired, or never arrived)
local id, keep = ARGV[6], ARGV[7] == 'k'
purge()
if redis.call('ZREM', Q, id) == 1 then
  redis.call('HDEL', W, id)
  redis.call('ZREM', X, id)
  grant_head()  -- the head may have changed
  finish()
  return {1}
end
local rec = redis.call('HGET', H, id)
if not rec then
  finish()
  return {0}
end
local _, p, md, tok = parse(rec)
if keep then
  finish()
  return {2, tonumber(tok), tonumber(string.sub(md, 2, 2)) or 0}
end
redis.call('HDEL', H, id)
redis.call('ZREM', X, id)
avail = avail + p
dirty = true
grant_head()
finish()
return {3}
