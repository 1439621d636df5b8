-- Deletes the queue and everything in it, at most ARGV[3] jobs per call. ARGV: 1 prefix, 2 '1'
-- to go on though jobs are running (their workers' outcomes are then dropped). Returns how many
-- jobs this call deleted (the caller calls until 0; the queue's own keys go with the last
-- call), or -1 when jobs are running and ARGV[2] is not '1'.
local max = tonumber(ARGV[3])
if ARGV[2] ~= '1' and redis.call('ZCARD', K_active) > 0 then return -1 end
-- Paused first, so that no worker takes what is being deleted.
redis.call('HSET', K_meta, 'paused', '1')
local n = 0
for _, set in ipairs({K_wait, K_delayed, K_active, K_completed, K_dead, K_cancelled}) do
  if n >= max then break end
  local ids = redis.call('ZRANGE', set, 0, max - n - 1)
  for _, id in ipairs(ids) do
    -- forget() leaves the active set alone: a running job is taken out of it here.
    if set == K_active then redis.call('ZREM', K_active, id) end
    forget(id)
  end
  n = n + #ids
end
if n > 0 then return n end
-- Nothing written so far stays.
pending, jobs, dirty, is_dirty = {}, {}, {}, {}
redis.call('DEL', unpack(KEYS))
return 0
