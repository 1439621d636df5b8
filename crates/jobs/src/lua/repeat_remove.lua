-- Removes a repeatable job (the runs already enqueued stay). ARGV: 1 prefix, 2 key. Returns 1,
-- or 0 when there was none.
local f = {}
for i, name in ipairs(REPEAT_FIELDS) do f[i] = ARGV[2] .. ':' .. name end
redis.call('HDEL', K_repeat, unpack(f))
return redis.call('ZREM', K_repeats, ARGV[2])
