-- status: a read-only snapshot of one primitive (no purge; expired entries show expires_in <= 0).
-- KEYS[1..5]: see prelude.lua (this script has no prelude and writes nothing)
-- Reply: {now_ms, {k, c, b, a, t}, {id, record, expiry, ...holders}, {id, record, expiry, ...waiters
-- in queue order}}
local tm = redis.call('TIME')
local now = math.floor((tonumber(tm[1]) * 1000000 + tonumber(tm[2])) / 1000)
local meta = redis.call('HMGET', KEYS[1], 'k', 'c', 'b', 'a', 't')
for i = 1, 5 do if not meta[i] then meta[i] = '' end end
local hs = {}
local h = redis.call('HGETALL', KEYS[2])
for i = 1, #h, 2 do
  hs[#hs + 1] = h[i]
  hs[#hs + 1] = h[i + 1]
  hs[#hs + 1] = redis.call('ZSCORE', KEYS[5], h[i]) or '0'
end
local ws = {}
local q = redis.call('ZRANGE', KEYS[3], 0, -1)
for i = 1, #q do
  ws[#ws + 1] = q[i]
  ws[#ws + 1] = redis.call('HGET', KEYS[4], q[i]) or ''
  ws[#ws + 1] = redis.call('ZSCORE', KEYS[5], q[i]) or '0'
end
return {now, meta, hs, ws}
