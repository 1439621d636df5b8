-- Enqueues a repeatable job's due run and schedules the next, once, whoever asks first.
-- ARGV: 1 prefix, 2 key, 3 the run's time (ms, as read from the schedule), 4 the next run's
-- time (ms), 5.. as enqueue from its ARGV[2], with no delay (the run's id is the key and the run's time, so a
-- run is never enqueued twice). Returns the run's id, or false when another worker fired it.
local score = redis.call('ZSCORE', K_repeats, ARGV[2])
if not score or tonumber(score) ~= tonumber(ARGV[3]) then return false end
redis.call('ZADD', K_repeats, ARGV[4], ARGV[2])
redis.call('HSET', K_repeat, ARGV[2] .. ':next', ARGV[4])
return add_job(5)
