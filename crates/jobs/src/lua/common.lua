-- Shared by every script (prepended by the crate): key names and the wait-queue score.
-- ARGV[1] is always the queue's key prefix, ending in ':' and carrying the hash tag.
local P = ARGV[1]
local function jk(id) return P .. 'job:' .. id end
-- Higher priority first, then first in, first out: (255 - priority) * 2^40 + seq.
local function wait_score(priority, seq) return (255 - tonumber(priority)) * 1099511627776 + tonumber(seq) end
local function event(kind, id, extra)
  redis.call('XADD', P .. 'events', 'MAXLEN', '~', 10000, '*', 'event', kind, 'id', id, 'detail', extra or '')
end
-- Moves due delayed jobs to the wait queue (at most 100 per call: no unbounded loop).
local function promote(now)
  local due = redis.call('ZRANGEBYSCORE', P .. 'delayed', '-inf', now, 'LIMIT', 0, 100)
  for _, id in ipairs(due) do
    redis.call('ZREM', P .. 'delayed', id)
    local f = redis.call('HMGET', jk(id), 'priority', 'seq')
    if f[1] then
      redis.call('ZADD', P .. 'wait', wait_score(f[1], f[2]), id)
      redis.call('HSET', jk(id), 'state', 'waiting')
    end
  end
end
-- Takes the next job for a worker:
-- {id, name, payload, attempts, max_attempts, timeout_ms, backoff}.
local function take(now, token, worker, lease_ms)
  promote(now)
  local popped = redis.call('ZPOPMIN', P .. 'wait')
  if #popped == 0 then return false end
  local id = popped[1]
  local k = jk(id)
  redis.call('HSET', k, 'state', 'active', 'token', token, 'worker', worker, 'started', now)
  local attempts = redis.call('HINCRBY', k, 'attempts', 1)
  redis.call('ZADD', P .. 'active', now + lease_ms, id)
  event('active', id, worker)
  local f = redis.call('HMGET', k, 'name', 'payload', 'max_attempts', 'timeout_ms', 'backoff')
  return {id, f[1], f[2], attempts, f[3], f[4], f[5]}
end
-- Ends a job as cancelled, kept for ttl_ms (0: kept until removed).
local function cancelled(id, now, ttl_ms)
  local k = jk(id)
  redis.call('HSET', k, 'state', 'cancelled', 'error', 'cancelled', 'finished', now)
  redis.call('HDEL', k, 'token', 'cancel')
  local unique = redis.call('HGET', k, 'unique')
  if unique and unique ~= '' then redis.call('DEL', P .. 'unique:' .. unique) end
  if tonumber(ttl_ms) > 0 then redis.call('PEXPIRE', k, ttl_ms) end
  event('cancelled', id)
end
