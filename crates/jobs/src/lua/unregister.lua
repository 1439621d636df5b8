-- A worker leaving on shutdown, its jobs finished or given back. ARGV: 1 prefix, 2 worker id.
redis.call('DEL', P .. 'worker:' .. ARGV[2])
redis.call('ZREM', P .. 'workers', ARGV[2])
if redis.call('SCARD', P .. 'worker:' .. ARGV[2] .. ':jobs') == 0 then
  redis.call('DEL', P .. 'worker:' .. ARGV[2] .. ':jobs')
end
return 1
