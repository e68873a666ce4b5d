-- interlock redis backend: prelude shared by every state-changing script (prepended to each).
--
-- One primitive = three keys sharing one hash tag (Redis Cluster keeps them in one slot):
-- KEYS[1] m  hash: k kind, c capacity, b bounded ("1"/"0"), a available permits, t last fencing
--            token, s queue arrival sequence, d "previous owner died" flag for the next grant,
--            e a lower bound of the earliest expiry in X (server ms; purge() skips X before it),
--            i when the keys' idle expiry is next refreshed (server ms), q "0" when Q is known to be
--            empty (anything else, or missing: Q may hold requests);
--            "h<id>" -> holder record "sid|permits|mode died|token|granted_ms|info";
--            "w<id>" -> waiter record "sid|permits|mode|seq|enqueued_ms|info"
-- KEYS[2] q  zset: request id -> arrival sequence of the queued requests (strict FIFO order)
-- KEYS[3] x  zset: request id -> expiry (server ms) of every holder and every queued request, plus
--            the member '~' at NONE (so the key outlives its last lease and keeps its idle expiry)
-- ARGV[1] channel prefix: grants are published to ARGV[1] .. sid (one channel per process)
-- ARGV[2] kind, ARGV[3] capacity, ARGV[4] bounded ("1"/"0"), ARGV[5] idle expiry of the keys (ms)
-- ARGV[6] the request id the script is about (acquire, release, cancel), else anything.
-- Script-specific arguments follow from ARGV[7].
--
-- Invariants (between scripts):
--   bounded: a + sum(permits of holders) == c; unbounded: c grows with signal, shrinks with forget.
--   Every id has exactly one record (h or w); a w-record id is in q; every id is in x.
--   If q is non-empty, its head does not fit in a (grants are made eagerly, in FIFO order).
--   If q is non-empty, the field q is not "0" (only a script that saw q empty writes "0").
--   Every key that exists has an idle expiry at least idle/2 away: refresh() runs when a state
--   change finds i passed (and when the keys are created), and a new q is given one at once.
-- Time is the server's (TIME): clients never send timestamps. Tokens are max(t + 1, now in us), so
-- they keep increasing when the keys are lost (a restart without persistence).
-- Redis >= 7 always replicates effects; older servers need it for TIME before writes.
if not redis.REDIS_VERSION_NUM then pcall(redis.replicate_commands) end

local M, Q, X = KEYS[1], KEYS[2], KEYS[3]
local ID = ARGV[6]
local NONE = 9000000000000000  -- "no expiry" (server ms), also the score of X's member '~'
-- The server's clock (TIME), read by clock(): every script calls it first, except a release with
-- nothing queued, which needs no time at all (it neither purges nor grants; see release.lua).
local now_us, now
local function clock()  -- (at most one TIME per script: a fast path may have read it already)
  if now then return end
  local tm = redis.call('TIME')
  now_us = tonumber(tm[1]) * 1000000 + tonumber(tm[2])
  now = math.floor(now_us / 1000)
end

local meta = redis.call('HMGET', M, 'k', 'c', 'b', 'a', 't', 's', 'd', 'h' .. ID, 'e', 'i', 'q')
local kind, cap, bounded, avail, last, seq, died
local myrec = meta[8]  -- this request's holder record, if it holds a grant
if not meta[1] then
  kind, cap, bounded = ARGV[2], tonumber(ARGV[3]), ARGV[4]
  avail, last, seq, died = cap, 0, 0, 0
else
  kind, cap, bounded = meta[1], tonumber(meta[2]), meta[3]
  avail, last = tonumber(meta[4]), tonumber(meta[5]) or 0
  seq, died = tonumber(meta[6]) or 0, tonumber(meta[7]) or 0
  if kind ~= ARGV[2] or bounded ~= ARGV[4] or (bounded == '1' and cap ~= tonumber(ARGV[3])) then
    return {-1, kind, string.format('%d', cap), bounded}
  end
end
--@fast (an operation's fast path, <name>_fast.lua, is spliced here: it sees the state above only)
local dirty = not meta[1]
-- ex <= every score in X (0 = unknown): scores only grow on renewal, so it stays a lower bound
-- when entries leave or are renewed; xadd() lowers it for new entries.
local ex = meta[1] and tonumber(meta[9]) or 0
local exdirty = false
-- queued: Q may hold requests (the field q, see the invariants); false once seen empty
local queued = meta[11] ~= '0'
local refreshing = not meta[1]  -- set the keys' idle expiry in finish()
local sets, dels = {}, {}  -- writes to M, applied by finish(): deletions first
local grants = {}

local function fmt(n) return string.format('%d', n) end

local function parse(rec)
  local sid, p, md, tok, t, info = string.match(rec, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|(.*)$')
  return sid, tonumber(p), md, tok, t, info
end

local function next_token()
  local tok = last + 1
  if now_us > tok then tok = now_us end
  last = tok
  dirty = true
  return tok
end

local function put(field, value)
  sets[#sets + 1] = field
  sets[#sets + 1] = value
end

-- Strict FIFO: grant from the head of the queue while the head fits; finish() publishes one message
-- per process with its grants.
local function grant_head()
  while queued and avail > 0 do
    local head = redis.call('ZPOPMIN', Q)
    local id = head[1]
    if not id then
      queued = false
      break
    end
    local rec = redis.call('HGET', M, 'w' .. id)
    if rec then
      local sid, p, md, _, _, info = parse(rec)
      if p > avail then  -- the head waits for more permits: put it back where it was
        redis.call('ZADD', Q, head[2], id)
        redis.call('PEXPIRE', Q, ARGV[5])  -- (ZPOPMIN of the last member deleted the key)
        break
      end
      avail = avail - p
      dels[#dels + 1] = 'w' .. id
      local tok = fmt(next_token())
      local d = died
      died = 0
      local hrec = sid .. '|' .. p .. '|' .. md .. d .. '|' .. tok .. '|' .. now .. '|' .. info
      put('h' .. id, hrec)
      if id == ID then myrec = hrec end
      local item = id .. ' ' .. tok .. ' ' .. d
      local g = grants[sid]
      if g then grants[sid] = g .. ' ' .. item else grants[sid] = item end
    end
  end
end

local function xadd(score, id)
  redis.call('ZADD', X, score, id)
  if score < ex then
    ex = score
    exdirty = true
  end
end

-- Drop every holder and waiter whose lease expired (its process stopped renewing it). Nothing can
-- have expired before ex (one Redis call fewer on most scripts).
local function purge()
  if now < ex then return end
  local dead = redis.call('ZRANGEBYSCORE', X, '-inf', now, 'LIMIT', 0, 1000)
  local first = redis.call('ZRANGE', X, #dead, #dead, 'WITHSCORES')
  ex = math.min(tonumber(first[2]) or NONE, NONE)
  exdirty = true
  if #dead == 0 then return end
  redis.call('ZREM', X, unpack(dead))
  for i = 1, #dead do
    local id = dead[i]
    if id == ID then myrec = nil end
    local rec = redis.call('HGET', M, 'h' .. id)
    if rec then
      local _, p = parse(rec)
      dels[#dels + 1] = 'h' .. id
      avail = avail + p
      died = 1
      dirty = true
    elseif redis.call('HDEL', M, 'w' .. id) == 1 then
      redis.call('ZREM', Q, id)
    end
  end
  grant_head()
end

-- Milliseconds until the earliest lease expiry (a waiter's only timed re-check), or -1.
local function next_check()
  local e = redis.call('ZRANGE', X, 0, 0, 'WITHSCORES')
  local at = tonumber(e[2])
  if at and at < NONE then return math.max(0, at - now) end
  return -1
end

-- The keys are in use: make sure their idle expiry is at least idle/2 away (one check per script,
-- the PEXPIREs about once per idle/2).
local function touch()
  if now >= (tonumber(meta[10]) or 0) then refreshing = true end
end

local function finish()
  for i = 1, #dels, 500 do
    redis.call('HDEL', M, unpack(dels, i, math.min(i + 499, #dels)))
  end
  if exdirty then put('e', fmt(ex)) end
  if dirty then
    put('a', fmt(avail))
    put('t', fmt(last))
    put('d', died)
    put('s', fmt(seq))
    put('c', fmt(cap))
  end
  if queued ~= (meta[11] ~= '0') then put('q', queued and '1' or '0') end
  if not meta[1] then
    put('k', kind)
    put('b', bounded)
  end
  if refreshing then
    if not now then clock() end
    put('i', fmt(now + math.floor(tonumber(ARGV[5]) / 2)))
  end
  for i = 1, #sets, 1000 do
    redis.call('HSET', M, unpack(sets, i, math.min(i + 999, #sets)))
  end
  if refreshing then
    redis.call('ZADD', X, NONE, '~')
    redis.call('PEXPIRE', M, ARGV[5])
    redis.call('PEXPIRE', X, ARGV[5])
    if queued then redis.call('PEXPIRE', Q, ARGV[5]) end
  end
  for sid, payload in pairs(grants) do
    redis.call('PUBLISH', ARGV[1] .. sid, payload)
  end
end
