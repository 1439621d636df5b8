-- Removes a repeatable job (the runs already enqueued stay). ARGV: 1 prefix, 2 key. Returns 1,
-- or 0 when there was none.
redis.call('DEL', P .. 'repeat:' .. ARGV[2])
return redis.call('ZREM', P .. 'repeats', ARGV[2])
