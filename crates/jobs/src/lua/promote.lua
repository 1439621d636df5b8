-- Runs a delayed job now. ARGV: 1 prefix, 2 id. Returns the job's state after the call
-- ('waiting' when it was delayed, else the state it is in), or false for no such job.
local id = ARGV[2]
local state = jget(id, 'state')
if not state then return false end
if state ~= 'delayed' then return state end
redis.call('ZREM', K_delayed, id)
to_wait(id)
redis.call('LPUSH', K_signal, '1')
event('promoted', id)
return 'waiting'
