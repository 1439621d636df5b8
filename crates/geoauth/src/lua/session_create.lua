-- Stores a new session and lists it under its user (a sorted set scored by absolute expiry,
-- trimmed of sessions past it).
-- KEYS[1] session, KEYS[2] user's sessions
-- ARGV[1] digest, ARGV[2] idle ms, ARGV[3] absolute expiry ms, ARGV[4] now ms,
-- ARGV[5..] field, value, ...
local fields = {}
for i = 5, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
local left = tonumber(ARGV[3]) - tonumber(ARGV[4])
redis.call('PEXPIRE', KEYS[1], math.max(1, math.min(tonumber(ARGV[2]), left)))
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[2], last[2])
return 1
