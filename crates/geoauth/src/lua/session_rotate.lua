-- Moves a session to a new id (the old one is dead at once), optionally with new data.
-- KEYS[1] old session, KEYS[2] new session, KEYS[3] user's sessions
-- ARGV[1] old digest, ARGV[2] new digest, ARGV[3] channel, ARGV[4] idle ms, ARGV[5] now ms,
-- ARGV[6] data JSON ('' keeps the old data)
local fields = redis.call('HGETALL', KEYS[1])
if #fields == 0 then return 0 end
local s = {}
for i = 1, #fields, 2 do s[fields[i]] = fields[i + 1] end
if s['channel'] ~= ARGV[3] then return 2 end
local left = tonumber(s['absolute']) - tonumber(ARGV[5])
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[3], ARGV[1])
if left <= 0 then return 0 end
redis.call('HSET', KEYS[2], unpack(fields))
redis.call('HSET', KEYS[2], 'last_seen', ARGV[5])
if ARGV[6] ~= '' then redis.call('HSET', KEYS[2], 'data', ARGV[6]) end
redis.call('PEXPIRE', KEYS[2], math.min(tonumber(ARGV[4]), left))
redis.call('ZADD', KEYS[3], s['absolute'], ARGV[2])
return 1
