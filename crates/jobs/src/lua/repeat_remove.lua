-- Removes a repeatable job (the runs already enqueued stay). ARGV: 1 prefix, 2 key. Returns 1,
-- or 0 when there was none.
rdel(K_repeat, ARGV[2], REPEAT_FIELDS)
return redis.call('ZREM', K_repeats, ARGV[2])
