-- Takes back the jobs of dead workers and jobs whose lock expired. ARGV: 1 prefix, 2 now ms,
-- 3 max stalls, 4 how long a worker may go without a heartbeat (ms).
-- First the workers whose heartbeat stopped (at most 10 per call; each holds at most its
-- concurrency in jobs): their jobs go back at once, whatever their lease. Then what the
-- heartbeat misses, jobs whose lock expired (at most 100 per call). Returns how many jobs
-- were taken back.
local now, max_stalls, worker_ttl = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local taken = 0
for _, w in ipairs(redis.call('ZRANGEBYSCORE', P .. 'workers', '-inf', now - worker_ttl, 'LIMIT', 0, 10)) do
  for _, id in ipairs(redis.call('SMEMBERS', wk(w) .. ':jobs')) do
    local f = redis.call('HMGET', jk(id), 'state', 'worker')
    if f[1] == 'active' and f[2] == w then
      stall(id, now, max_stalls, 'worker ' .. w .. ' lost')
      taken = taken + 1
    end
  end
  redis.call('DEL', wk(w), wk(w) .. ':jobs')
  redis.call('ZREM', P .. 'workers', w)
  event('worker-lost', w)
end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. 'active', '-inf', now, 'LIMIT', 0, 100)) do
  stall(id, now, max_stalls, 'lock expired')
  taken = taken + 1
end
return taken
