-- Defines (or redefines) a repeatable job. ARGV: 1 prefix, 2 key, 3 first run ms, 4.. field,
-- value pairs of its definition (name, payload, options, schedule).
local k = P .. 'repeat:' .. ARGV[2]
local fields = {}
for i = 4, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('DEL', k)
redis.call('HSET', k, 'next', ARGV[3], unpack(fields))
redis.call('ZADD', P .. 'repeats', ARGV[3], ARGV[2])
return 1
