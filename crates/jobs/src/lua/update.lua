-- Replaces the payload of a job that has not started: waiting or delayed. ARGV: 1 prefix, 2 id,
-- 3 the job's name (must be the stored one), 4 the new payload. Returns the job's state (the
-- payload replaced only when it is waiting or delayed), 'mismatch' for another job's name, or
-- false for no such job.
local f = jmget(ARGV[2], {'state', 'name'})
if not f[1] then return false end
if f[2] ~= ARGV[3] then return 'mismatch' end
if f[1] == 'waiting' or f[1] == 'delayed' then
  jset(ARGV[2], {'payload', ARGV[4]})
  event('updated', ARGV[2])
end
return f[1]
