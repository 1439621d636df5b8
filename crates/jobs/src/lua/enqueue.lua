-- Adds a job. ARGV: 1 prefix, 2 id, 3 now ms, 4 run-at ms, 5 priority, 6 unique key ('' none),
-- 7.. field, value pairs of the job hash. Returns the job's id (an existing one for a duplicate
-- unique key).
local id, now, run_at, priority, unique = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5], ARGV[6]
if unique ~= '' then
  local existing = redis.call('GET', P .. 'unique:' .. unique)
  if existing and redis.call('EXISTS', jk(existing)) == 1 then return existing end
  redis.call('SET', P .. 'unique:' .. unique, id)
end
local seq = redis.call('INCR', P .. 'seq')
local fields = {}
for i = 7, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', jk(id), unpack(fields))
redis.call('HSET', jk(id), 'seq', seq, 'priority', priority, 'attempts', 0, 'created', now, 'unique', unique)
if run_at > now then
  redis.call('HSET', jk(id), 'state', 'delayed')
  redis.call('ZADD', P .. 'delayed', run_at, id)
else
  redis.call('HSET', jk(id), 'state', 'waiting')
  redis.call('ZADD', P .. 'wait', wait_score(priority, seq), id)
end
redis.call('LPUSH', P .. 'signal', 1)
redis.call('LTRIM', P .. 'signal', 0, 63)
event('added', id)
return id
