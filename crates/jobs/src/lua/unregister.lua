-- A worker leaving on shutdown, its jobs finished or given back. ARGV: 1 prefix, 2 worker id.
rdel(K_workers_info, ARGV[2], WORKER_FIELDS)
redis.call('ZREM', K_workers, ARGV[2])
return 1
