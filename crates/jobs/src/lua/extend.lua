-- Renews a job's lock. ARGV: 1 prefix, 2 id, 3 token, 4 lease ms (the lock then lasts that long
-- from the server's now). Returns 1; 2 when the job was cancelled meanwhile (its worker stops
-- it); 0 when the lock was lost.
local f = jmget(ARGV[2], {'token', 'cancel'})
if f[1] ~= ARGV[3] then return 0 end
redis.call('ZADD', K_active, 'XX', server_now() + tonumber(ARGV[4]), ARGV[2])
if f[2] == '1' then return 2 end
return 1
