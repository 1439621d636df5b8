-- Takes back the jobs of dead workers and jobs whose lock expired. ARGV: 1 prefix, 2 max
-- stalls, 3 how long a worker may go without a heartbeat (ms).
-- First the workers whose heartbeat stopped (at most 10 per call; each holds at most its
-- concurrency in jobs): their jobs go back at once, whatever their lease, each charged its share
-- of the death. Then what the heartbeat misses, jobs whose lock expired (at most 100 per call),
-- each charged a whole stall. Then the cancelled jobs whose time is up are removed (at most 100
-- per call). Returns how many jobs were taken back.
local now, now_s = server_now()
local max_stalls, worker_ttl = tonumber(ARGV[2]), tonumber(ARGV[3])
local taken = 0
local lost = redis.call('ZRANGEBYSCORE', K_workers, '-inf', now - worker_ttl, 'LIMIT', 0, 10)
if #lost > 0 then
  local held = {}
  for _, w in ipairs(lost) do held[w] = {} end
  for _, j in ipairs(active_jobs({'worker'})) do
    if j[2] and held[j[2]] then table.insert(held[j[2]], j[1]) end
  end
  for _, w in ipairs(lost) do
    local ids = held[w]
    local share = math.ceil(WHOLE / math.max(#ids, 1))
    for _, id in ipairs(ids) do
      stall(id, now, now_s, max_stalls, 'worker ' .. w .. ' lost', share, #ids > 1 and w or '')
    end
    taken = taken + #ids
    rdel(K_workers_info, w, WORKER_FIELDS)
    redis.call('ZREM', K_workers, w)
    event('worker-lost', w)
  end
end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', K_active, '-inf', now, 'LIMIT', 0, 100)) do
  stall(id, now, now_s, max_stalls, 'lock expired', WHOLE, '')
  taken = taken + 1
end
remove_finished(K_cancelled, redis.call('ZRANGEBYSCORE', K_cancelled, '-inf', now, 'LIMIT', 0, 100))
return taken
