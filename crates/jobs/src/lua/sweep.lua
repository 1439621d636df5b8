-- Takes back the jobs of dead workers and jobs whose lock expired. ARGV: 1 prefix, 2 max
-- stalls, 3 how long a worker may go without a heartbeat (ms).
-- First the workers whose heartbeat stopped (at most 10 per call; each holds at most its
-- concurrency in jobs): their jobs go back at once, whatever their lease, each charged its share
-- of the death. Then what the heartbeat misses, jobs whose lock expired (at most 100 per call),
-- each charged a whole stall. Returns how many jobs were taken back.
local now, now_s = server_now()
local max_stalls, worker_ttl = tonumber(ARGV[2]), tonumber(ARGV[3])
local taken = 0
for _, w in ipairs(redis.call('ZRANGEBYSCORE', P .. 'workers', '-inf', now - worker_ttl, 'LIMIT', 0, 10)) do
  local held = {}
  for _, id in ipairs(redis.call('SMEMBERS', wk(w) .. ':jobs')) do
    local f = redis.call('HMGET', jk(id), 'state', 'worker')
    if f[1] == 'active' and f[2] == w then held[#held + 1] = id end
  end
  local share = math.ceil(WHOLE / math.max(#held, 1))
  for _, id in ipairs(held) do
    stall(id, now, now_s, max_stalls, 'worker ' .. w .. ' lost', share, #held > 1 and w or '')
  end
  taken = taken + #held
  redis.call('DEL', wk(w), wk(w) .. ':jobs')
  redis.call('ZREM', P .. 'workers', w)
  event('worker-lost', w)
end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. 'active', '-inf', now, 'LIMIT', 0, 100)) do
  stall(id, now, now_s, max_stalls, 'lock expired', WHOLE, '')
  taken = taken + 1
end
-- The cancelled jobs whose hash expired leave the cancelled set.
redis.call('ZREMRANGEBYSCORE', P .. 'cancelled', '-inf', now)
return taken
