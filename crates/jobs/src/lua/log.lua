-- Appends a line to a running job's log (the last 1000 lines are kept). ARGV: 1 prefix, 2 id,
-- 3 lock token, 4 the line. Returns 1, or 0 when the lock was lost.
local id = ARGV[2]
if jget(id, 'token') ~= ARGV[3] then return 0 end
local n = jincr(id, 'logs', 1)
redis.call('ZADD', K_logs, 0, log_line(id, n, ARGV[4]))
if n > 1000 then redis.call('ZREMRANGEBYLEX', K_logs, '[' .. id .. '\n', '(' .. log_line(id, n - 999)) end
return 1
