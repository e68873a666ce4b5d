-- acquire: grant now, or queue (FIFO), or refuse (non-blocking). Idempotent per request id.
-- KEYS: see prelude.lua
-- ARGV[6] request id, ARGV[7] sid (the process's grant channel suffix), ARGV[8] permits,
-- ARGV[9] mode ("x" exclusive, "s" shared, "p" permits), ARGV[10] flags ("b" queue if not
-- grantable now, "f" fair: do not pass queued waiters), ARGV[11] lease ttl ms, ARGV[12] info
-- Reply: {1, token, died} granted | {0, next_check_ms} queued | {2} would block
--        | {-1, kind, capacity, bounded} capacity mismatch
local id, sid, p, md, flags = ARGV[6], ARGV[7], tonumber(ARGV[8]), ARGV[9], ARGV[10]
local ttl, info = tonumber(ARGV[11]), ARGV[12]
purge()
local rec = redis.call('HGET', H, id)
if rec then  -- a retry of a request that was granted: return the same grant
  local _, _, hmd, tok = parse(rec)
  finish()
  return {1, tonumber(tok), tonumber(string.sub(hmd, 2, 2)) or 0}
end
if redis.call('ZSCORE', Q, id) then  -- a retry of a queued request
  finish()
  return {0, next_check()}
end
local fair = string.find(flags, 'f', 1, true)
if avail >= p and (not fair or redis.call('ZCARD', Q) == 0) then
  avail = avail - p
  local tok = next_token()
  local d = died
  died = 0
  redis.call('HSET', H, id, sid .. '|' .. p .. '|' .. md .. d .. '|' .. fmt(tok) .. '|' .. now .. '|' .. info)
  redis.call('ZADD', X, now + ttl, id)
  touch()
  finish()
  return {1, tok, d}
end
if not string.find(flags, 'b', 1, true) then
  finish()
  return {2}
end
seq = seq + 1
dirty = true
redis.call('ZADD', Q, seq, id)
redis.call('HSET', W, id, sid .. '|' .. p .. '|' .. md .. '|' .. seq .. '|' .. now .. '|' .. info)
redis.call('ZADD', X, now + ttl, id)
touch()
finish()
return {0, next_check()}
