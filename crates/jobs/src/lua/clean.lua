-- Removes finished jobs of one state ('completed', 'dead' or 'cancelled') that finished at
-- least ARGV[3] ms ago (0: all), at most ARGV[4] per call. ARGV: 1 prefix, 2 state. Returns
-- how many this call removed (the caller calls until 0).
local now = server_now()
local set = ({completed = K_completed, dead = K_dead, cancelled = K_cancelled})[ARGV[2]]
local before = now - tonumber(ARGV[3])
local ids
if ARGV[2] == 'cancelled' then
  -- Scored by when they expire: their finish time is in their fields.
  ids = {}
  for _, id in ipairs(redis.call('ZRANGE', set, 0, tonumber(ARGV[4]) * 4 - 1)) do
    local finished = tonumber(jget(id, 'finished') or '0')
    if finished <= before and #ids < tonumber(ARGV[4]) then ids[#ids + 1] = id end
  end
else
  ids = redis.call('ZRANGEBYSCORE', set, '-inf', before, 'LIMIT', 0, tonumber(ARGV[4]))
end
remove_finished(set, ids)
events('removed', ids, 'cleaned')
return #ids
