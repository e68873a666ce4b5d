-- acquire: grant now, or queue (FIFO), or refuse (non-blocking). Idempotent per request id.
-- KEYS: see prelude.lua
-- ARGV[6] request id, ARGV[7] sid (the process's grant channel suffix), ARGV[8] permits,
-- ARGV[9] mode ("x" exclusive, "s" shared, "p" permits), ARGV[10] flags ("b" queue if not
-- grantable now, "f" fair: do not pass queued waiters, "o" report whether every holder is this
-- process's: for deadlock detection), ARGV[11] lease ttl ms, ARGV[12] info
-- Reply: {1, token, died} granted | {0, next_check_ms, all holders are ours (1/0)} queued
--        | {2} would block
--        | {-1, kind, capacity, bounded} capacity mismatch
local sid, p, md, flags = ARGV[7], tonumber(ARGV[8]), ARGV[9], ARGV[10]
local ttl, info = tonumber(ARGV[11]), ARGV[12]
clock()
purge()
if myrec then  -- a retry of a request that was granted: return the same grant
  local _, _, hmd, tok = parse(myrec)
  finish()
  return {1, tonumber(tok), tonumber(string.sub(hmd, 2, 2)) or 0}
end
local n = 0  -- requests in Q (0 when the q field says it is empty: no call)
if queued then
  n = redis.call('ZCARD', Q)
  if n == 0 then
    queued = false
  elseif redis.call('ZSCORE', Q, ID) then  -- a retry of a queued request
    finish()
    return {0, next_check()}
  end
end
touch()
if avail >= p and (n == 0 or not string.find(flags, 'f', 1, true)) then
  avail = avail - p
  local tok = next_token()
  local d = died
  died = 0
  put('h' .. ID, sid .. '|' .. p .. '|' .. md .. d .. '|' .. fmt(tok) .. '|' .. now .. '|' .. info)
  xadd(now + ttl, ID)
  finish()
  return {1, tok, d}
end
if not string.find(flags, 'b', 1, true) then
  finish()
  return {2}
end
seq = seq + 1
dirty = true
redis.call('ZADD', Q, seq, ID)
if n == 0 then redis.call('PEXPIRE', Q, ARGV[5]) end  -- a new key: give it its idle expiry now
queued = true
put('w' .. ID, sid .. '|' .. p .. '|' .. md .. '|' .. seq .. '|' .. now .. '|' .. info)
xadd(now + ttl, ID)
finish()
local mine = 0
if string.find(flags, 'o', 1, true) then
  mine = 1
  local all = redis.call('HGETALL', M)
  for i = 1, #all, 2 do
    local f = all[i]
    if string.sub(f, 1, 1) == 'h' and string.sub(all[i + 1], 1, #sid + 1) ~= sid .. '|' then mine = 0 end
  end
end
return {0, next_check(), mine}
