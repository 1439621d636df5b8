-- A worker leaving on shutdown, its jobs finished or given back. ARGV: 1 prefix, 2 worker id.
local f = {}
for i, name in ipairs(WORKER_FIELDS) do f[i] = ARGV[2] .. ':' .. name end
redis.call('HDEL', K_workers_info, unpack(f))
redis.call('ZREM', K_workers, ARGV[2])
return 1
