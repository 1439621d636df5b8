-- Cancels a job. ARGV: 1 prefix, 2 id, 3 how long the cancelled job is kept (ms).
-- A waiting or delayed job is cancelled here; a running one is marked, and its worker stops it
-- at its next lock renewal. Returns the job's state after the call, or false for no such job.
local id = ARGV[2]
local _, now = server_now()
local state = jget(id, 'state')
if not state then return false end
if state == 'waiting' or state == 'delayed' then
  from_wait(id)
  redis.call('ZREM', K_delayed, id)
  cancelled(id, now, ARGV[3])
  event('cancelled', id)
  return 'cancelled'
end
if state == 'active' then jset(id, {'cancel', 1, 'cancel_ttl', ARGV[3]}) end
return state
