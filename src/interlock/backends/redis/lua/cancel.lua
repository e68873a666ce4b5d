-- cancel a queued request (timeout, cancellation, interrupt).
-- KEYS: see prelude.lua
-- ARGV[6] request id, ARGV[7] "k" keep a grant that raced with the cancel | "r" release it
-- Reply: {1} left the queue | {2, token, died} it was granted and is kept | {3} it was granted
--        and has been released | {0} unknown (expired, or never arrived)
local keep = ARGV[7] == 'k'
clock()
purge()
if redis.call('ZREM', Q, ID) == 1 then
  dels[#dels + 1] = 'w' .. ID
  redis.call('ZREM', X, ID)
  grant_head()  -- the head may have changed
  finish()
  return {1}
end
if not myrec then
  finish()
  return {0}
end
local _, p, md, tok = parse(myrec)
if keep then
  finish()
  return {2, tonumber(tok), tonumber(string.sub(md, 2, 2)) or 0}
end
dels[#dels + 1] = 'h' .. ID
redis.call('ZREM', X, ID)
avail = avail + p
dirty = true
grant_head()
finish()
return {3}
