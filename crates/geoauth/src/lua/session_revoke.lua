-- Ends one session. KEYS[1] session, KEYS[2] user's sessions; ARGV[1] digest
local n = redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return n
