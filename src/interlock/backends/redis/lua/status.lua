-- status: a read-only snapshot of one primitive (no purge; expired entries show expires_in <= 0).
-- KEYS[1..3]: see prelude.lua (this script has no prelude and writes nothing)
-- Reply: {now_ms, {k, c, b, a, t}, {id, holder record, expiry, ...}, {id, waiter record, expiry, ...
-- in queue order}}
local tm = redis.call('TIME')
local now = math.floor((tonumber(tm[1]) * 1000000 + tonumber(tm[2])) / 1000)
local meta = redis.call('HMGET', KEYS[1], 'k', 'c', 'b', 'a', 't')
for i = 1, 5 do if not meta[i] then meta[i] = '' end end
local hs = {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local f = all[i]
  if string.sub(f, 1, 1) == 'h' then
    local id = string.sub(f, 2)
    hs[#hs + 1] = id
    hs[#hs + 1] = all[i + 1]
    hs[#hs + 1] = redis.call('ZSCORE', KEYS[3], id) or '0'
  end
end
local ws = {}
local q = redis.call('ZRANGE', KEYS[2], 0, -1)
for i = 1, #q do
  ws[#ws + 1] = q[i]
  ws[#ws + 1] = redis.call('HGET', KEYS[1], 'w' .. q[i]) or ''
  ws[#ws + 1] = redis.call('ZSCORE', KEYS[3], q[i]) or '0'
end
return {now, meta, hs, ws}
