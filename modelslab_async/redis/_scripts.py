"""
The key layout and the Lua scripts: each backend operation is one EVALSHA round trip.

Keys of one server, for namespace ``modelslab`` and slot id ``gpu-a:key-3f9a1c``::

    {modelslab}:gpu-a:key-3f9a1c:slots     sorted set: holder id -> lease deadline (ms, Redis TIME)
    {modelslab}:gpu-a:key-3f9a1c:cooldown  present (PX = time left) while the server cools down
    {modelslab}:gpu-a:key-3f9a1c:breaker   present while the breaker is not closed
    {modelslab}:gpu-a:key-3f9a1c:open      present (PX = time left) while the breaker is open
    {modelslab}:gpu-a:key-3f9a1c:probe     the half-open probe's holder id (PX = its lease)
    {modelslab}:gpu-a:key-3f9a1c:fails     consecutive failures while closed
    {modelslab}:released                   the pub/sub channel a release publishes on

The hash tag is the namespace, not the server: ``acquire`` picks among several candidate
servers atomically in one script (first fit, or least loaded), so all the keys it reads must
sit in one Cluster hash slot. One namespace therefore lives on one Cluster node; its load is
a few small scripts per job (microseconds of Redis time), far below what one node serves.
Different pools can use different namespaces, which spread over the cluster. A server id
with braces in it cannot move a key to another slot: only the first ``{...}`` counts.

Every script that creates a key gives it its expiry in the same script. Times are Redis's own
(``TIME`` and PX/PTTL), never a client's clock.
"""

from __future__ import annotations

__all__ = [
    "ACQUIRE",
    "COOL_DOWN",
    "FAILURE",
    "RELEASE",
    "RENEW",
    "STATES",
    "SUCCESS",
    "Keys",
]

# How long breaker memory (the failure count, the "not closed" mark) outlives its last change.
STATE_TTL_MS = 24 * 3600 * 1000

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""


class Keys:
    """Key and channel names of one namespace."""

    def __init__(self, namespace: str) -> None:
        if not namespace or any(c in namespace for c in "{} \t\r\n"):
            raise ValueError(f"namespace must be a non-empty word without braces: {namespace!r}")
        self.tag = "{" + namespace + "}"
        self.channel = f"{self.tag}:released"

    def slots(self, server: str) -> str:
        return f"{self.tag}:{server}:slots"

    def cooldown(self, server: str) -> str:
        return f"{self.tag}:{server}:cooldown"

    def probe(self, server: str) -> str:
        return f"{self.tag}:{server}:probe"

    def acquire(self, server: str) -> list[str]:
        """The five keys the acquire script reads per candidate."""
        base = f"{self.tag}:{server}"
        return [
            f"{base}:slots",
            f"{base}:cooldown",
            f"{base}:breaker",
            f"{base}:open",
            f"{base}:probe",
        ]

    def breaker(self, server: str) -> list[str]:
        """The four keys of a server's breaker: not-closed mark, open, probe, failure count."""
        base = f"{self.tag}:{server}"
        return [f"{base}:breaker", f"{base}:open", f"{base}:probe", f"{base}:fails"]

    def state(self, server: str) -> list[str]:
        """The five keys the states script reads per server."""
        base = f"{self.tag}:{server}"
        return [
            f"{base}:slots",
            f"{base}:cooldown",
            f"{base}:breaker",
            f"{base}:open",
            f"{base}:fails",
        ]


# KEYS: per candidate slots, cooldown, breaker, open, probe.
# ARGV: holder, lease ms, least loaded ('1'/'0'), then capacity and weight per candidate.
# Returns {candidate index (1-based, 0: none), probe (1/0)}.
ACQUIRE = (
    _NOW
    + """
local holder, lease, least = ARGV[1], tonumber(ARGV[2]), ARGV[3] == '1'
local n = #KEYS / 5
local best, best_load, best_probe = 0, 0, 0
for i = 1, n do
  -- a retried call (the answer was lost): the holder keeps the slot it has, and no second one
  if redis.call('ZSCORE', KEYS[i * 5 - 4], holder) then
    best = i
    if redis.call('GET', KEYS[i * 5]) == holder then best_probe = 1 end
    n = 0
    break
  end
end
for i = 1, n do
  local slots, probe = KEYS[i * 5 - 4], KEYS[i * 5]
  redis.call('ZREMRANGEBYSCORE', slots, '-inf', now)  -- leases of dead holders
  if redis.call('EXISTS', KEYS[i * 5 - 3]) == 0 and redis.call('EXISTS', KEYS[i * 5 - 1]) == 0 then
    local eligible, is_probe = true, 0
    if redis.call('EXISTS', KEYS[i * 5 - 2]) == 1 then
      -- half-open: one probe at a time, and nobody else
      if redis.call('EXISTS', probe) == 1 then eligible = false else is_probe = 1 end
    end
    if eligible then
      local capacity = tonumber(ARGV[2 + 2 * i])
      local held = redis.call('ZCARD', slots)
      if held < capacity then
        local load = (held + 1) * tonumber(ARGV[3 + 2 * i]) / capacity
        if best == 0 or load < best_load then
          best, best_load, best_probe = i, load, is_probe
        end
        if not least then break end
      end
    end
  end
end
if best == 0 then return {0, 0} end
local slots = KEYS[best * 5 - 4]
redis.call('ZADD', slots, now + lease, holder)
if redis.call('PTTL', slots) < lease then redis.call('PEXPIRE', slots, lease) end
if best_probe == 1 then redis.call('SET', KEYS[best * 5], holder, 'PX', lease, 'NX') end
return {best, best_probe}
"""
)

# KEYS: pairs of slots, probe. ARGV: lease ms, then one holder per pair.
# Returns one 1 (renewed) or 0 (it had been dropped: counted again) per pair. A live holder's
# job is running on the server whatever Redis remembers (a stall longer than the lease, Redis
# restarted empty): counting it again makes new jobs wait instead of overloading the server.
RENEW = (
    _NOW
    + """
local lease = tonumber(ARGV[1])
local out = {}
for i = 1, #KEYS / 2 do
  local slots, probe, holder = KEYS[i * 2 - 1], KEYS[i * 2], ARGV[i + 1]
  if redis.call('ZSCORE', slots, holder) then out[i] = 1 else out[i] = 0 end
  redis.call('ZADD', slots, now + lease, holder)
  if redis.call('PTTL', slots) < lease then redis.call('PEXPIRE', slots, lease) end
  if redis.call('GET', probe) == holder then redis.call('PEXPIRE', probe, lease) end
end
return out
"""
)

# KEYS: pairs of slots, probe. ARGV: holder, channel. Returns how many slots were freed.
RELEASE = """
local freed = 0
for i = 1, #KEYS / 2 do
  if redis.call('ZREM', KEYS[i * 2 - 1], ARGV[1]) == 1 then
    freed = freed + 1
    redis.call('PUBLISH', ARGV[2], KEYS[i * 2 - 1])
  end
  if redis.call('GET', KEYS[i * 2]) == ARGV[1] then redis.call('DEL', KEYS[i * 2]) end
end
return freed
"""

# KEYS: cooldown. ARGV: ms. Only ever lengthens. Returns the ms left after the call.
COOL_DOWN = """
local ms = tonumber(ARGV[1])
local left = redis.call('PTTL', KEYS[1])
if left < ms then
  redis.call('SET', KEYS[1], '1', 'PX', ms)
  return ms
end
return left
"""

# KEYS: breaker, open, probe, fails. ARGV: threshold, open ms, fatal, probe, state ttl ms.
# Returns 1 when this failure opened (or reopened) the breaker.
FAILURE = """
local open_ms, memory = tonumber(ARGV[2]), tonumber(ARGV[5])
if redis.call('EXISTS', KEYS[1]) == 1 then
  -- open or half-open: only the probe's failure counts, and it opens the breaker again
  if ARGV[4] ~= '1' then return 0 end
  redis.call('SET', KEYS[2], '1', 'PX', open_ms)
  redis.call('DEL', KEYS[3])
  redis.call('PEXPIRE', KEYS[1], open_ms + memory)
  return 1
end
local count = redis.call('INCR', KEYS[4])
redis.call('PEXPIRE', KEYS[4], memory)
if ARGV[3] == '1' or count >= tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], '1', 'PX', open_ms + memory)
  redis.call('SET', KEYS[2], '1', 'PX', open_ms)
  return 1
end
return 0
"""

# KEYS: breaker, open, probe, fails. ARGV: probe, channel. Returns 1 when it closed the breaker.
SUCCESS = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[4])
  return 0
end
if ARGV[1] ~= '1' then return 0 end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
redis.call('PUBLISH', ARGV[2], KEYS[1])
return 1
"""

# KEYS: per server slots, cooldown, breaker, open, fails. Read-only.
# Returns per server: live holders, cooldown ms left, breaker (0 closed, 1 open, 2 half-open),
# failures.
STATES = (
    _NOW
    + """
local out = {}
for i = 1, #KEYS / 5 do
  out[#out + 1] = redis.call('ZCOUNT', KEYS[i * 5 - 4], string.format('(%d', now), '+inf')
  local left = redis.call('PTTL', KEYS[i * 5 - 3])
  if left < 0 then left = 0 end
  out[#out + 1] = left
  local state = 0
  if redis.call('EXISTS', KEYS[i * 5 - 2]) == 1 then
    if redis.call('EXISTS', KEYS[i * 5 - 1]) == 1 then state = 1 else state = 2 end
  end
  out[#out + 1] = state
  out[#out + 1] = tonumber(redis.call('GET', KEYS[i * 5]) or '0')
end
return out
"""
)
