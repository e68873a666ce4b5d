-- release / forget / downgrade one grant, then grant the head waiter(s) in the same script.
-- KEYS: see prelude.lua
-- ARGV[6] request id of the grant, ARGV[7] op ("r" release, "f" forget, "d" downgrade),
-- ARGV[8] permits to return (0 = all), ARGV[9] "1" if the holder abandoned it (died)
-- Reply: {1} done | {0} not held (expired, reclaimed or lost by the server): nothing was touched
local op, rp = ARGV[7], tonumber(ARGV[8])
-- With nothing queued, a release needs neither the clock nor a purge: it grants nobody, and a record
-- still here is still ours (had it expired and been reclaimed, a purge would have removed it; an
-- expired holder that nobody reclaimed yet frees nothing by going later: the next acquire purges).
if queued then
  clock()
  purge()
end
if not myrec then
  finish()
  return {0}
end
local sid, p, md, tok, t, info = parse(myrec)
if op == 'd' then
  avail = avail + (p - 1)
  put('h' .. ID, sid .. '|1|s' .. string.sub(md, 2, 2) .. '|' .. tok .. '|' .. t .. '|' .. info)
elseif rp > 0 and rp < p then
  avail = avail + rp
  put('h' .. ID, sid .. '|' .. (p - rp) .. '|' .. md .. '|' .. tok .. '|' .. t .. '|' .. info)
else
  dels[#dels + 1] = 'h' .. ID
  redis.call('ZREM', X, ID)
  if op == 'f' and bounded == '0' then cap = cap - p else avail = avail + p end
end
if ARGV[9] == '1' then died = 1 end
dirty = true
grant_head()
finish()
return {1}
