-- A worker's heartbeat: registers it (or refreshes it) in the queue's worker registry, with the
-- server's time as its beat (and as its start, the first time).
-- ARGV: 1 prefix, 2 worker id, 3 how long the record lives without another beat (ms),
-- 4.. field, value pairs (host, pid, queues).
local w = ARGV[2]
local _, now = server_now()
local fields = {}
for i = 4, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', wk(w), 'beat', now, unpack(fields))
redis.call('HSETNX', wk(w), 'started', now)
redis.call('PEXPIRE', wk(w), ARGV[3])
redis.call('ZADD', P .. 'workers', now, w)
return 1
