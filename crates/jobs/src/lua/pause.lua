-- Pauses the queue (ARGV[2] '1': workers take nothing from it until it is resumed) or resumes
-- it ('0'). ARGV: 1 prefix. Returns 1.
if ARGV[2] == '1' then
  redis.call('HSET', P .. 'meta', 'paused', '1')
  event('paused', '')
else
  redis.call('HDEL', P .. 'meta', 'paused')
  redis.call('LPUSH', P .. 'signal', '1')
  event('resumed', '')
end
return 1
