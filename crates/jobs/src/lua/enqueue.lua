-- Adds a job. ARGV: 1 prefix, 2 id, 3 now ms, 4 run-at ms, 5 priority, 6 unique key ('' none),
-- 7.. field, value pairs of the job hash. Returns the job's id (an existing one for a duplicate
-- unique key or id).
return add_job(2)
