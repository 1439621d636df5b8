-- Appends a line to a running job's log (the last 1000 lines are kept). ARGV: 1 prefix, 2 id,
-- 3 lock token, 4 the line. Returns 1, or 0 when the lock was lost.
if redis.call('HGET', jk(ARGV[2]), 'token') ~= ARGV[3] then return 0 end
redis.call('RPUSH', lk(ARGV[2]), ARGV[4])
redis.call('LTRIM', lk(ARGV[2]), -1000, -1)
return 1
