-- Deletes a key record and its id, if the id still points at this record.
-- KEYS[1] record, KEYS[2] id index
-- ARGV[1] id, ARGV[2] digest, ARGV[3] channel, ARGV[4] invalidation payload
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
