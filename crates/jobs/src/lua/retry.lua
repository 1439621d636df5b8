-- Runs a dead job again, with fresh attempts and stalls. ARGV: 1 prefix, 2 id. Returns the
-- job's state after the call ('waiting' when it was dead, else the state it is in), or false
-- for no such job.
local id = ARGV[2]
local state = jget(id, 'state')
if not state then return false end
if state ~= 'dead' then return state end
redis.call('ZREM', K_dead, id)
jset(id, {'attempts', 0, 'stalls', 0, 'blame', 0, 'group', ''})
jdel(id, {'finished'})
to_wait(id)
redis.call('LPUSH', K_signal, '1')
event('retried', id)
return 'waiting'
