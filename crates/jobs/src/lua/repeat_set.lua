-- Defines (or redefines) a repeatable job. ARGV: 1 prefix, 2 key, 3 first run ms, 4.. field,
-- value pairs of its definition (name, fields, priority, schedule).
local key = ARGV[2]
rdel(K_repeat, key, REPEAT_FIELDS)
local fields = {'next', ARGV[3]}
for i = 4, #ARGV do fields[#fields + 1] = ARGV[i] end
rset(K_repeat, key, fields)
redis.call('ZADD', K_repeats, ARGV[3], key)
return 1
