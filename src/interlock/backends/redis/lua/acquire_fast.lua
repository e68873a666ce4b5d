-- acquire, fast path (spliced into prelude.lua at --@fast, before its functions are defined): a
-- fresh request on an existing primitive whose queue is known empty (q = "0"), with nothing to purge
-- yet (now < e), no idle-expiry refresh due (now < i) and enough permits available. The grant is the
-- one acquire.lua would make (same holder record, token, expiry and fields), without creating the
-- prelude's closures and write buffers: they cost as much server time as the four Redis calls.
-- Anything else falls through to the general path (ARGV: see acquire.lua).
if meta[1] and meta[11] == '0' and not myrec and avail >= tonumber(ARGV[8]) then
  clock()
  local e = tonumber(meta[9]) or 0
  if now < e and now < (tonumber(meta[10]) or 0) then
    local p = tonumber(ARGV[8])
    local tok = last + 1
    if now_us > tok then tok = now_us end
    local stok = string.format('%d', tok)
    local exp = now + tonumber(ARGV[11])
    redis.call('ZADD', X, exp, ID)
    local w = {'h' .. ID, ARGV[7] .. '|' .. p .. '|' .. ARGV[9] .. died .. '|' .. stok .. '|' .. now .. '|' ..
               ARGV[12], 'a', string.format('%d', avail - p), 't', stok}
    if died ~= 0 then
      w[#w + 1] = 'd'
      w[#w + 1] = '0'
    end
    if exp < e then  -- e stays a lower bound of every expiry in X
      w[#w + 1] = 'e'
      w[#w + 1] = string.format('%d', exp)
    end
    redis.call('HSET', M, unpack(w))
    return {1, tok, died}
  end
end
