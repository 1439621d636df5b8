-- Adds a job. ARGV: 1 prefix, 2 id, 3 delay ms (0: none), 4 priority, 5 unique key ('' none),
-- 6.. field, value pairs of the job hash. Returns the job's id (an existing one for a duplicate
-- unique key or id).
return add_job(2)
