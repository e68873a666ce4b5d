-- release, fast path (spliced into prelude.lua at --@fast, before its functions are defined): a full
-- release ("r", all permits) of a grant this id holds, on a primitive whose queue is known empty
-- (q = "0"). Then release.lua would grant nobody and read no clock; this does the same writes
-- (holder record and lease gone, permits back, the died flag if abandoned) without creating the
-- prelude's closures. Anything else falls through to the general path (ARGV: see release.lua).
if meta[1] and meta[11] == '0' and myrec and ARGV[7] == 'r' and ARGV[8] == '0' then
  local p = tonumber(string.match(myrec, '^[^|]*|([^|]*)|'))
  redis.call('ZREM', X, ID)
  redis.call('HDEL', M, 'h' .. ID)
  if ARGV[9] == '1' then
    redis.call('HSET', M, 'a', string.format('%d', avail + p), 'd', '1')
  else
    redis.call('HSET', M, 'a', string.format('%d', avail + p))
  end
  return {1}
end
