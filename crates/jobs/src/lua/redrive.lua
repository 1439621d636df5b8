-- Moves dead jobs back to the wait queues with fresh attempts. ARGV: 1 prefix, 2 how many at
-- most (bounded by 1000). Returns how many moved.
local ids = redis.call('ZRANGE', K_dead, 0, math.min(tonumber(ARGV[2]), 1000) - 1)
for _, id in ipairs(ids) do
  redis.call('ZREM', K_dead, id)
  jset(id, {'attempts', 0, 'stalls', 0})
  to_wait(id)
  event('redriven', id)
end
if #ids > 0 then redis.call('LPUSH', K_signal, 1) end
return #ids
