-- Runs a dead job again, with fresh attempts and stalls. ARGV: 1 prefix, 2 id. Returns the
-- job's state after the call ('waiting' when it was dead, else the state it is in), or false
-- for no such job.
local id = ARGV[2]
local k = jk(id)
local state = redis.call('HGET', k, 'state')
if not state then return false end
if state ~= 'dead' then return state end
redis.call('ZREM', P .. 'dead', id)
redis.call('HSET', k, 'attempts', 0, 'stalls', 0, 'blame', 0, 'group', '')
redis.call('HDEL', k, 'finished')
to_wait(id)
redis.call('LPUSH', P .. 'signal', '1')
event('retried', id)
return 'waiting'
