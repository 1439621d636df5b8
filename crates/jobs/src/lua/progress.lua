-- A running job's progress. ARGV: 1 prefix, 2 id, 3 lock token, 4 progress (JSON). Returns 1,
-- or 0 when the lock was lost.
if jget(ARGV[2], 'token') ~= ARGV[3] then return 0 end
jset(ARGV[2], {'progress', ARGV[4]})
event('progress', ARGV[2], ARGV[4])
return 1
