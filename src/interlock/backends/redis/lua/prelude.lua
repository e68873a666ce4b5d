-- interlock redis backend: prelude shared by every state-changing script (prepended to each).
--
-- One primitive = five keys sharing one hash tag (Redis Cluster keeps them in one slot):
-- KEYS[1] m  meta hash: k kind, c capacity, b bounded ("1"/"0"), a available permits,
--            t last fencing token, s queue arrival sequence, d "previous owner died" flag for the
--            next grant
-- KEYS[2] h  holders hash: request id -> "sid|permits|mode died|token|granted_ms|info"
-- KEYS[3] q  queue zset: request id -> arrival sequence (strict FIFO order)
-- KEYS[4] w  waiters hash: request id -> "sid|permits|mode|seq|enqueued_ms|info"
-- KEYS[5] x  expiry zset: request id -> expiry (server ms) of every holder and waiter
-- ARGV[1] channel prefix: grants are published to ARGV[1] .. sid (one channel per process)
-- ARGV[2] kind, ARGV[3] capacity, ARGV[4] bounded ("1"/"0"), ARGV[5] idle expiry of the keys (ms)
-- Script-specific arguments start at ARGV[6].
--
-- Invariants (hold between scripts):
--   bounded: a + sum(permits of h) == c; unbounded: c grows with signal and shrinks with forget.
--   Every id is in exactly one of h (granted) or q+w (queued), and then also in x.
--   If q is non-empty, its head does not fit in a (grants are made eagerly, in FIFO order).
-- Time is the server's (TIME): clients never send timestamps. Tokens are max(t + 1, now in us), so
-- they keep increasing when the keys are lost (a restart without persistence).
pcall(redis.replicate_commands)  -- Redis < 7 needs effects replication for TIME before writes

local M, H, Q, W, X = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local CHP = ARGV[1]
local tm = redis.call('TIME')
local now_us = tonumber(tm[1]) * 1000000 + tonumber(tm[2])
local now = math.floor(now_us / 1000)

local meta = redis.call('HMGET', M, 'k', 'c', 'b', 'a', 't', 's', 'd')
local kind, cap, bounded, avail, last, seq, died
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
local dirty = not meta[1]
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

-- Strict FIFO: grant from the head of the queue while the head fits; publish each grant to the
-- waiter's process (finish() sends one message per process).
local function grant_head()
  while avail > 0 do
    local head = redis.call('ZRANGE', Q, 0, 0)
    local id = head[1]
    if not id then break end
    local rec = redis.call('HGET', W, id)
    if not rec then
      redis.call('ZREM', Q, id)
    else
      local sid, p, md, _, _, info = parse(rec)
      if p > avail then break end
      avail = avail - p
      redis.call('ZREM', Q, id)
      redis.call('HDEL', W, id)
      local tok = fmt(next_token())
      local d = died
      died = 0
      redis.call('HSET', H, id, sid .. '|' .. p .. '|' .. md .. d .. '|' .. tok .. '|' .. now .. '|' .. info)
      local item = id .. ' ' .. tok .. ' ' .. d
      local g = grants[sid]
      if g then grants[sid] = g .. ' ' .. item else grants[sid] = item end
    end
  end
end

-- Drop every holder and waiter whose lease expired (its process stopped renewing it).
local function purge()
  local dead = redis.call('ZRANGEBYSCORE', X, '-inf', now, 'LIMIT', 0, 1000)
  for i = 1, #dead do
    local id = dead[i]
    redis.call('ZREM', X, id)
    local rec = redis.call('HGET', H, id)
    if rec then
      local _, p = parse(rec)
      redis.call('HDEL', H, id)
      avail = avail + p
      died = 1
      dirty = true
    elseif redis.call('HDEL', W, id) == 1 then
      redis.call('ZREM', Q, id)
    end
  end
  if #dead > 0 then grant_head() end
end

-- Milliseconds until the earliest lease expiry (a waiter's only timed re-check), or -1.
local function next_check()
  local e = redis.call('ZRANGE', X, 0, 0, 'WITHSCORES')
  if e[2] then return math.max(0, tonumber(e[2]) - now) end
  return -1
end

local function touch()
  local idle = ARGV[5]
  redis.call('PEXPIRE', M, idle)
  redis.call('PEXPIRE', H, idle)
  redis.call('PEXPIRE', Q, idle)
  redis.call('PEXPIRE', W, idle)
  redis.call('PEXPIRE', X, idle)
end

local function finish()
  if dirty then
    redis.call('HSET', M, 'k', kind, 'c', fmt(cap), 'b', bounded, 'a', fmt(avail), 't', fmt(last),
      's', fmt(seq), 'd', died)
    if not meta[1] then redis.call('PEXPIRE', M, ARGV[5]) end
  end
  for sid, payload in pairs(grants) do
    redis.call('PUBLISH', CHP .. sid, payload)
  end
end
