-- Moves a key to a new token. The old token keeps working until ARGV[4] (ms); at or before
-- ARGV[5] (now) it stops at once.
-- KEYS[1] old record, KEYS[2] new record, KEYS[3] id index
-- ARGV[1] id, ARGV[2] old digest, ARGV[3] new digest, ARGV[4] old valid until ms,
-- ARGV[5] now ms, ARGV[6] channel, ARGV[7] payload
if redis.call('HGET', KEYS[3], ARGV[1]) ~= ARGV[2] then return 0 end
local fields = redis.call('HGETALL', KEYS[1])
if #fields == 0 then return 0 end
redis.call('HSET', KEYS[2], unpack(fields))
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
local until_ms = tonumber(ARGV[4])
if until_ms <= tonumber(ARGV[5]) then
  redis.call('DEL', KEYS[1])
else
  local expires = tonumber(redis.call('HGET', KEYS[1], 'expires') or '0')
  if expires == 0 or expires > until_ms then
    redis.call('HSET', KEYS[1], 'expires', ARGV[4])
    redis.call('PEXPIREAT', KEYS[1], ARGV[4])
  end
  -- The old record is no longer reachable by id.
  redis.call('HSET', KEYS[1], 'superseded', '1')
end
redis.call('PUBLISH', ARGV[6], ARGV[7])
return 1
