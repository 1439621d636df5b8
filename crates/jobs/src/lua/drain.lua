-- Removes waiting jobs (and delayed ones too when ARGV[2] is '1'), at most ARGV[3] per call.
-- ARGV: 1 prefix. Returns how many this call removed (the caller calls until 0).
local max = tonumber(ARGV[3])
local ids = redis.call('ZRANGE', K_wait, 0, max - 1)
if ARGV[2] == '1' and #ids < max then
  for _, id in ipairs(redis.call('ZRANGE', K_delayed, 0, max - #ids - 1)) do ids[#ids + 1] = id end
end
for _, id in ipairs(ids) do forget(id) end
events('removed', ids, 'drained')
return #ids
