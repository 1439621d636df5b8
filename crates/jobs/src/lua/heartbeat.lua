-- A worker's heartbeat: registers it (or refreshes it) in the queue's worker registry, with the
-- server's time as its beat (and as its start, the first time).
-- ARGV: 1 prefix, 2 worker id, 3 how long the record lives without another beat (ms: its
-- field 'expires'; the sweep removes it once the worker is found dead),
-- 4.. field, value pairs (host, pid, queues).
local w = ARGV[2]
local now_n, now = server_now()
local fields = {'beat', now, 'expires', string.format('%.0f', now_n + tonumber(ARGV[3]))}
for i = 4, #ARGV do fields[#fields + 1] = ARGV[i] end
rset(K_workers_info, w, fields)
redis.call('HSETNX', K_workers_info, w .. ':started', now)
redis.call('ZADD', K_workers, now, w)
return 1
