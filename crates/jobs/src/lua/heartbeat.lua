-- A worker's heartbeat: registers it (or refreshes it) in the queue's worker registry.
-- ARGV: 1 prefix, 2 worker id, 3 now ms, 4 how long the record lives without another beat
-- (ms), 5.. field, value pairs (host, pid, queues, started).
local w, now = ARGV[2], ARGV[3]
local fields = {}
for i = 5, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', wk(w), 'beat', now, unpack(fields))
redis.call('PEXPIRE', wk(w), ARGV[4])
redis.call('ZADD', P .. 'workers', now, w)
return 1
