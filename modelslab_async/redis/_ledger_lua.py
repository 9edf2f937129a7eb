"""
The ledger's Lua scripts: every change of a job's state is one of these, atomic, in Redis.

A job's hash (``{<namespace>:b:<batch>}:j:<id>``) holds::

    s    state: queued, submitting, accepted, generated, succeeded, failed
    h    a hash of the manifest line (a changed line is refused by ENQUEUE)
    n    the manifest line number
    b    the request body, as JSON without any key (deleted when the job ends)
    w e  the owner (a worker id) and the epoch of its ownership (fencing: every transition
         but FINISH-at-enqueue names both, and is refused once another owner took the job)
    L    the owner's lease deadline (ms, Redis TIME); renewed by the owner's heartbeat
    d    deliveries (takes not handed back), for the dead-letter rule
    srv rid     the server (route) that accepted the job, and its request id
    a t0 el pd  submit attempts, first submit (ms), seconds to the answer, possible duplicate
    o    the output URLs (JSON), once generated
    r    the final record (JSON), once final: then only s, h, n and r are left

Transitions: queued -> submitting (BEGIN_SUBMIT, before every POST) -> accepted (ACCEPT,
request id and server) -> generated (GENERATE, outputs) -> succeeded | failed (FINISH).
BEGIN_SUBMIT refuses a job that is accepted or later: an accepted job is only ever collected.
TAKE of a job found ``submitting`` marks it ``pd`` (its earlier submit may have run).
"""

from __future__ import annotations

__all__ = [
    "ACCEPT",
    "BEGIN_SUBMIT",
    "ENQUEUE",
    "FINISH",
    "GENERATE",
    "HAND_BACK",
    "HEARTBEAT",
    "TAKE",
]

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# Owner check: ARGV[1] = owner, ARGV[2] = epoch; v = HMGET job w e s.
_OWNED = """
local v = redis.call('HMGET', KEYS[1], 'w', 'e', 's')
if v[1] ~= ARGV[1] or v[2] ~= ARGV[2] then return 0 end
local s = v[3]
"""

# KEYS: job, counts, ids, fin, stream, meta. ARGV: id, hash, line, state, payload.
# 1 added, 0 present with the same line, -1 present with another line.
ENQUEUE = """
local old = redis.call('HGET', KEYS[1], 'h')
if old then
  if old == ARGV[2] then return 0 end
  return -1
end
if ARGV[4] == 'queued' then
  redis.call('HSET', KEYS[1], 's', 'queued', 'h', ARGV[2], 'n', ARGV[3], 'b', ARGV[5])
  redis.call('XADD', KEYS[5], '*', 'j', ARGV[1])
else
  redis.call('HSET', KEYS[1], 's', 'failed', 'h', ARGV[2], 'n', ARGV[3], 'r', ARGV[5])
  redis.call('RPUSH', KEYS[4], ARGV[1])
  local ttl = tonumber(redis.call('HGET', KEYS[6], 'ttl') or '0')
  if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
end
redis.call('HINCRBY', KEYS[2], ARGV[4], 1)
redis.call('RPUSH', KEYS[3], ARGV[1])
redis.call('HINCRBY', KEYS[6], 'total', 1)
return 1
"""

# KEYS: job. ARGV: owner, lease ms.
# {'missing'} | {'final'} | {'busy', owner} | {state, epoch, deliveries, b, srv, rid, o, a, el, pd}
TAKE = (
    _NOW
    + """
local v = redis.call('HMGET', KEYS[1], 's', 'w', 'L')
local s = v[1]
if not s then return {'missing'} end
if s == 'succeeded' or s == 'failed' then return {'final'} end
if v[2] and v[2] ~= '' and v[2] ~= ARGV[1] and tonumber(v[3] or '0') > now then
  return {'busy', v[2]}
end
local e = redis.call('HINCRBY', KEYS[1], 'e', 1)
local d = redis.call('HINCRBY', KEYS[1], 'd', 1)
if s == 'submitting' then redis.call('HSET', KEYS[1], 'pd', '1') end
redis.call('HSET', KEYS[1], 'w', ARGV[1], 'L', now + tonumber(ARGV[2]))
local f = redis.call('HMGET', KEYS[1], 'b', 'srv', 'rid', 'o', 'a', 'el', 'pd')
return {s, tostring(e), tostring(d), f[1], f[2], f[3], f[4], f[5], f[6], f[7]}
"""
)

# KEYS: job, counts. ARGV: owner, epoch, server, lease ms. 1 ok, 0 not the owner, -1 too late.
BEGIN_SUBMIT = (
    _NOW
    + _OWNED
    + """
if s == 'queued' then
  redis.call('HINCRBY', KEYS[2], 'queued', -1)
  redis.call('HINCRBY', KEYS[2], 'submitting', 1)
elseif s ~= 'submitting' then
  return -1
end
redis.call('HSET', KEYS[1], 's', 'submitting', 'srv', ARGV[3], 'L', now + tonumber(ARGV[4]))
redis.call('HSETNX', KEYS[1], 't0', now)
redis.call('HINCRBY', KEYS[1], 'a', 1)
return 1
"""
)

# KEYS: job, counts. ARGV: owner, epoch, request id, server. 1 ok, 0 not the owner, -1 too late.
ACCEPT = (
    _OWNED
    + """
if s == 'accepted' then return 1 end
if s ~= 'submitting' then return -1 end
redis.call('HSET', KEYS[1], 's', 'accepted', 'rid', ARGV[3], 'srv', ARGV[4])
redis.call('HINCRBY', KEYS[2], 'submitting', -1)
redis.call('HINCRBY', KEYS[2], 'accepted', 1)
return 1
"""
)

# KEYS: job, counts. ARGV: owner, epoch, request id, server, outputs JSON, possible duplicate.
# {1, attempts, elapsed} | {0} not the owner | {-1} not submitted or accepted.
GENERATE = (
    _NOW
    + _OWNED
    + """
if s ~= 'generated' then
  if s ~= 'submitting' and s ~= 'accepted' then return {-1} end
  local t0 = tonumber(redis.call('HGET', KEYS[1], 't0') or now)
  redis.call('HSET', KEYS[1], 's', 'generated', 'rid', ARGV[3], 'srv', ARGV[4], 'o', ARGV[5],
    'el', tostring((now - t0) / 1000))
  redis.call('HINCRBY', KEYS[2], s, -1)
  redis.call('HINCRBY', KEYS[2], 'generated', 1)
end
if ARGV[6] == '1' then redis.call('HSET', KEYS[1], 'pd', '1') end
local f = redis.call('HMGET', KEYS[1], 'a', 'el', 'pd')
return {1, f[1] or '0', f[2] or '0', f[3] or '0'}
"""
)

# KEYS: job, counts, fin, meta, wstats, sstats, ticks, dead, stream.
# ARGV: owner, epoch, status, record, worker, server, elapsed ms, dead, pd, id, group, entry.
# 1 finished, 0 already final, -1 not the owner (nothing changed), -2 no such job.
FINISH = (
    _NOW
    + """
local v = redis.call('HMGET', KEYS[1], 'w', 'e', 's')
local s = v[3]
local function ack()
  if ARGV[12] ~= '' then
    redis.call('XACK', KEYS[9], ARGV[11], ARGV[12])
    redis.call('XDEL', KEYS[9], ARGV[12])
  end
end
if s == 'succeeded' or s == 'failed' then ack() return 0 end
if not s then ack() return -2 end
if v[1] ~= ARGV[1] or v[2] ~= ARGV[2] then return -1 end
redis.call('HINCRBY', KEYS[2], s, -1)
redis.call('HINCRBY', KEYS[2], ARGV[3], 1)
if ARGV[9] == '1' then redis.call('HINCRBY', KEYS[2], 'duplicates', 1) end
redis.call('HDEL', KEYS[1], 'b', 'w', 'e', 'L', 'd', 'srv', 'rid', 'a', 't0', 'el', 'pd', 'o')
redis.call('HSET', KEYS[1], 's', ARGV[3], 'r', ARGV[4])
redis.call('RPUSH', KEYS[3], ARGV[10])
if ARGV[5] ~= '' then redis.call('HINCRBY', KEYS[5], ARGV[5] .. '|' .. ARGV[3], 1) end
if ARGV[6] ~= '' then
  redis.call('HINCRBY', KEYS[6], ARGV[6] .. '|' .. ARGV[3], 1)
  redis.call('HINCRBY', KEYS[6], ARGV[6] .. '|ms', tonumber(ARGV[7]))
end
local bucket = math.floor(now / 10000)
local slot = tostring(bucket % 36)
local old = redis.call('HGET', KEYS[7], slot)
local count = 1
if old then
  local at = string.find(old, ':')
  if tonumber(string.sub(old, 1, at - 1)) == bucket then
    count = tonumber(string.sub(old, at + 1)) + 1
  end
end
redis.call('HSET', KEYS[7], slot, bucket .. ':' .. count)
if ARGV[8] == '1' then
  redis.call('RPUSH', KEYS[8], ARGV[10])
  redis.call('HINCRBY', KEYS[2], 'dead', 1)
end
local ttl = tonumber(redis.call('HGET', KEYS[4], 'ttl') or '0')
if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
ack()
return 1
"""
)

# KEYS: job, stream. ARGV: owner, epoch, group, entry. The entry is made idle at once, so the
# next reclaim by any worker takes it; the hand-back does not count as a delivery.
HAND_BACK = (
    _OWNED
    + """
redis.call('HSET', KEYS[1], 'w', '', 'L', 0)
redis.call('HINCRBY', KEYS[1], 'd', -1)
if ARGV[4] ~= '' then
  redis.call('XCLAIM', KEYS[2], ARGV[3], ARGV[1], 0, ARGV[4], 'IDLE', 1000000000, 'JUSTID')
end
return 1
"""
)

# KEYS: stream, beats, wstats, job 1..n. ARGV: owner, group, lease ms, in flight,
# entry 1..n ('' for none), epoch 1..n. Renews the owner's leases and resets the idle time of
# its stream entries (XCLAIM JUSTID: no delivery counted), only where it still owns both.
# A job found final was just finished (FINISH raced the beat): not lost. Returns the positions
# (from 1) of the jobs it lost.
HEARTBEAT = (
    _NOW
    + """
redis.call('ZADD', KEYS[2], now, ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1] .. '|flight', ARGV[4])
local n = #KEYS - 3
local lost = {}
for i = 1, n do
  local job = KEYS[i + 3]
  local entry = ARGV[4 + i]
  local v = redis.call('HMGET', job, 'w', 'e', 's')
  local final = v[3] == 'succeeded' or v[3] == 'failed'
  local ok = final or (v[1] == ARGV[1] and v[2] == ARGV[4 + n + i])
  if ok and not final and entry ~= '' then
    ok = #redis.call('XPENDING', KEYS[1], ARGV[2], entry, entry, 1, ARGV[1]) > 0
    if ok then redis.call('XCLAIM', KEYS[1], ARGV[2], ARGV[1], 0, entry, 'JUSTID') end
  end
  if final then
    -- finished meanwhile (by its owner, a moment ago): nothing to renew, nothing lost
  elseif ok then
    redis.call('HSET', job, 'L', now + tonumber(ARGV[3]))
  else
    table.insert(lost, i)
  end
end
return lost
"""
)
