-- Pauses the queue (ARGV[2] '1': workers take nothing from it until it is resumed) or resumes
-- it ('0'). ARGV: 1 prefix. Returns 1.
if ARGV[2] == '1' then
  redis.call('HSET', K_meta, 'paused', '1')
  event('paused', '')
else
  redis.call('HDEL', K_meta, 'paused')
  redis.call('LPUSH', K_signal, '1')
  event('resumed', '')
end
return 1
