-- Returns the jobs whose lock expired (their worker died or stopped renewing) to the wait
-- queue, or to the dead letter after too many stalls. ARGV: 1 prefix, 2 now ms, 3 max stalls.
-- At most 100 per call. Returns how many were taken back.
local now, max_stalls = tonumber(ARGV[2]), tonumber(ARGV[3])
local expired = redis.call('ZRANGEBYSCORE', P .. 'active', '-inf', now, 'LIMIT', 0, 100)
for _, id in ipairs(expired) do
  local k = jk(id)
  redis.call('ZREM', P .. 'active', id)
  redis.call('HDEL', k, 'token')
  local stalls = redis.call('HINCRBY', k, 'stalls', 1)
  if stalls > max_stalls then
    redis.call('HSET', k, 'state', 'dead', 'error', 'stalled too often', 'finished', now)
    redis.call('ZADD', P .. 'dead', now, id)
    event('dead', id, 'stalled too often')
  else
    local f = redis.call('HMGET', k, 'priority', 'seq')
    redis.call('HSET', k, 'state', 'waiting')
    redis.call('ZADD', P .. 'wait', wait_score(f[1], f[2]), id)
    redis.call('LPUSH', P .. 'signal', 1)
    event('stalled', id)
  end
end
return #expired
