-- Takes the next job. ARGV: 1 prefix, 2 now ms, 3 lock token, 4 worker id, 5 lease ms.
return take(tonumber(ARGV[2]), ARGV[3], ARGV[4], tonumber(ARGV[5]))
