"""The registry's Lua scripts: each runs atomically inside Redis, so a check and the write it
guards (the connection limit above all) can't interleave with another node's.

Key layout, every name under the configured prefix P:

- ``P instance:{instance}``: the node's name; a heartbeat key with a TTL, alive while it exists.
- ``P connection:{id}``: a hash of the connection's fields (``instance`` among them), with the
  same TTL, refreshed by its instance's heartbeat.
- ``P account:{account_id}``: a set of the account's connection ids; ids whose connection or
  instance is gone are dropped whenever a script meets them.
- ``P closes:{instance}``: a list of close requests (JSON) for that instance's connections,
  and also the pub/sub channel that tells the instance to take them at once.

A connection is live while its hash and its instance's key both exist. Keys the scripts find
through a hash or a set are not declared in KEYS: this works on one Redis server (or a
primary with replicas), not on Redis Cluster.
"""

from __future__ import annotations

# The instance holding connection ``id`` if the connection and its instance are alive, else
# false; ``alive`` caches instances already looked up by this call.
_LIVE = """
local function live_instance(prefix, id, alive)
  local instance = redis.call('HGET', prefix .. 'connection:' .. id, 'instance')
  if not instance then return false end
  if alive[instance] == nil then
    alive[instance] = redis.call('EXISTS', prefix .. 'instance:' .. instance) == 1
  end
  if alive[instance] then return instance end
  return false
end
"""

# KEYS: the account's set, the new connection's hash, this instance's key.
# ARGV: prefix, limit, ttl (ms), connection id, then the hash's field/value pairs.
# Returns 1 (added), 0 (the account is at its limit), -1 (this instance's key is gone: it must
# register its connections again first, or they would not count).
ADD = _LIVE + """
if redis.call('EXISTS', KEYS[3]) == 0 then return -1 end
local prefix, limit, ttl, id = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
-- Fewer members than the limit, dead ones included: fewer live ones too. Only an account at
-- its limit costs a look at each member (and the dead ones are dropped then).
if redis.call('SCARD', KEYS[1]) >= limit then
  local alive, count = {}, 0
  for _, member in ipairs(redis.call('SMEMBERS', KEYS[1])) do
    if live_instance(prefix, member, alive) then
      count = count + 1
    else
      redis.call('SREM', KEYS[1], member)
    end
  end
  if count >= limit then return 0 end
end
redis.call('HSET', KEYS[2], unpack(ARGV, 5))
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('SADD', KEYS[1], id)
redis.call('PEXPIRE', KEYS[1], ttl)
return 1
"""

# KEYS: the account's set. ARGV: prefix.
# Returns each live connection's hash as a flat field/value list.
LIST = _LIVE + """
local prefix, alive, found = ARGV[1], {}, {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if live_instance(prefix, id, alive) then
    found[#found + 1] = redis.call('HGETALL', prefix .. 'connection:' .. id)
  else
    redis.call('SREM', KEYS[1], id)
  end
end
return found
"""

# ARGV: prefix, then connection ids. Returns the live ones.
LIVE_AMONG = _LIVE + """
local alive, live = {}, {}
for i = 2, #ARGV do
  if live_instance(ARGV[1], ARGV[i], alive) then live[#live + 1] = ARGV[i] end
end
return live
"""

# KEYS: the connection's hash. ARGV: prefix, connection id, the request (JSON), ttl (ms).
# Queues the request for the instance holding the connection and wakes it; 0 when the
# connection is not live. The queue is the truth: a wake-up lost while the instance
# resubscribes is made up for by its next heartbeat, which takes the queue too.
CLOSE = _LIVE + """
local prefix = ARGV[1]
local instance = live_instance(prefix, ARGV[2], {})
if not instance then return 0 end
local queue = prefix .. 'closes:' .. instance
redis.call('RPUSH', queue, ARGV[3])
redis.call('PEXPIRE', queue, ARGV[4])
redis.call('PUBLISH', queue, ARGV[2])
return 1
"""

# KEYS: this instance's key, its close queue.
# ARGV: prefix, node, ttl (ms), then five per connection: id, account id, predictions,
# errors, last_request_at (predictions '-' when the counters did not change).
# Refreshes the instance's and its connections' TTLs and publishes changed counters; returns
# {the ids whose hash is gone (Redis restarted empty, or they expired during a stall: the
# caller registers them again), the close requests queued for this instance}.
BEAT = """
local prefix, ttl = ARGV[1], ARGV[3]
redis.call('SET', KEYS[1], ARGV[2], 'PX', ttl)
local missing, accounts = {}, {}
for i = 4, #ARGV, 5 do
  local id, account = ARGV[i], ARGV[i + 1]
  local conn = prefix .. 'connection:' .. id
  if redis.call('PEXPIRE', conn, ttl) == 0 then
    missing[#missing + 1] = id
  else
    if ARGV[i + 2] ~= '-' then
      redis.call('HSET', conn, 'predictions', ARGV[i + 2], 'errors', ARGV[i + 3],
                 'last_request_at', ARGV[i + 4])
    end
    -- Idempotent: puts back an id that another node dropped while this one stalled.
    redis.call('SADD', prefix .. 'account:' .. account, id)
    accounts[account] = true
  end
end
for account in pairs(accounts) do
  redis.call('PEXPIRE', prefix .. 'account:' .. account, ttl)
end
local closes = redis.call('LRANGE', KEYS[2], 0, -1)
redis.call('DEL', KEYS[2])
return {missing, closes}
"""
