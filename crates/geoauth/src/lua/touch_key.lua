-- Records a use, without recreating a record that was revoked meanwhile.
-- KEYS[1] record; ARGV[1] now ms
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'last_used', ARGV[1])
  return 1
end
return 0
