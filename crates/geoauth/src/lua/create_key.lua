-- Stores a new key record and indexes it by id; replaces a record stored under the same digest
-- (the user's default_public key, whose token is fixed) and drops that record's id.
-- KEYS[1] record, KEYS[2] id index
-- ARGV[1] id, ARGV[2] digest, ARGV[3] expire-at ms (0: never), ARGV[4] channel,
-- ARGV[5] invalidation payload, ARGV[6..] field, value, ...
local old_id = redis.call('HGET', KEYS[1], 'id')
if old_id then
  redis.call('HDEL', KEYS[2], old_id)
  redis.call('DEL', KEYS[1])
end
local fields = {}
for i = 6, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
local at = tonumber(ARGV[3])
if at > 0 then redis.call('PEXPIREAT', KEYS[1], at) end
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
