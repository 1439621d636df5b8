-- Deletes the queue and everything in it, at most ARGV[3] jobs per call. ARGV: 1 prefix, 2 '1'
-- to go on though jobs are running (their workers' outcomes are then dropped). Returns how many
-- jobs this call deleted (the caller calls until 0; the queue's own keys go with the last
-- call), or -1 when jobs are running and ARGV[2] is not '1'.
local max = tonumber(ARGV[3])
if ARGV[2] ~= '1' and redis.call('ZCARD', P .. 'active') > 0 then return -1 end
-- Paused first, so that no worker takes what is being deleted.
redis.call('HSET', P .. 'meta', 'paused', '1')
local n = 0
for _, set in ipairs({'wait', 'delayed', 'active', 'completed', 'dead', 'cancelled'}) do
  if n >= max then break end
  local ids = redis.call('ZRANGE', P .. set, 0, max - n - 1)
  for _, id in ipairs(ids) do
    -- forget() leaves the active set alone: a running job is taken out of it here.
    if set == 'active' then redis.call('ZREM', P .. 'active', id) end
    forget(id)
  end
  n = n + #ids
end
if n > 0 then return n end
for _, w in ipairs(redis.call('ZRANGE', P .. 'workers', 0, -1)) do
  redis.call('DEL', wk(w), wk(w) .. ':jobs')
end
for _, key in ipairs(redis.call('ZRANGE', P .. 'repeats', 0, -1)) do
  redis.call('DEL', P .. 'repeat:' .. key)
end
for _, tenant in ipairs(redis.call('SMEMBERS', P .. 'tenants:set')) do
  redis.call('DEL', tk(tenant))
end
redis.call('DEL', P .. 'meta', P .. 'events', P .. 'seq', P .. 'signal', P .. 'rate',
  P .. 'tenants', P .. 'tenants:set', P .. 'workers', P .. 'repeats', P .. 'repeats:parked',
  P .. 'metrics:completed', P .. 'metrics:dead')
return 0
