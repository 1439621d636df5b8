-- Sets when a key stops working; Redis deletes the record then.
-- KEYS[1] record, KEYS[2] id index
-- ARGV[1] id, ARGV[2] digest, ARGV[3] expire-at ms, ARGV[4] channel, ARGV[5] payload
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then return 0 end
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'expires', ARGV[3])
redis.call('PEXPIREAT', KEYS[1], ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
