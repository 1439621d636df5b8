-- Parks a repeatable job whose stored definition cannot be read (or has no next run): out of
-- the schedule, so that it no longer stands before the others, and into K_repeats_parked with
-- the reason, to be looked at. ARGV: 1 prefix, 2 key, 3 its run time as read (ms), 4 why.
-- Returns 1, or 0 when it changed meanwhile (another worker fired or moved it).
local score = redis.call('ZSCORE', K_repeats, ARGV[2])
if not score or tonumber(score) ~= tonumber(ARGV[3]) then return 0 end
redis.call('ZREM', K_repeats, ARGV[2])
redis.call('HSET', K_repeats_parked, ARGV[2], ARGV[4])
event('repeat_parked', ARGV[2], ARGV[4])
return 1
