-- Finishes a job and takes the next one in the same round trip.
-- ARGV: 1 prefix, 2 id, 3 token, 4 now ms, 5 outcome ('done' | 'retry' | 'fail' | 'release' |
-- 'cancel'; a job cancelled while it ran ends cancelled unless it is done), 6 result or error
-- text, 7 retry delay ms, 8 result ttl ms, 9 completed jobs kept (count), 10 fetch next ('1' |
-- '0'), 11 next token, 12 worker id, 13 lease ms, 14 completed jobs kept (age ms, 0 any),
-- 15 dead jobs kept (count, -1 any), 16 dead jobs kept (age ms, 0 any).
-- Returns {status, next}: status 1 done, 0 when the lock was lost (the job was taken back by
-- the sweep: its outcome is dropped); next as take() returns it.
local id, token, now, outcome = ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
local k = jk(id)
local status = 0
local f = redis.call('HMGET', k, 'token', 'state', 'worker', 'cancel', 'unique')
if f[1] == token and f[2] == 'active' then
  status = 1
  redis.call('ZREM', P .. 'active', id)
  if f[3] then redis.call('SREM', wk(f[3]) .. ':jobs', id) end
  redis.call('HDEL', k, 'token')
  if outcome ~= 'done' and f[4] == '1' then outcome = 'cancel' end
  if outcome == 'cancel' then
    cancelled(id, now, ARGV[8])
  elseif outcome == 'done' then
    redis.call('HSET', k, 'state', 'completed', 'result', ARGV[6], 'finished', now)
    redis.call('ZADD', P .. 'completed', now, id)
    if f[5] and f[5] ~= '' then redis.call('DEL', P .. 'unique:' .. f[5]) end
    if tonumber(ARGV[8]) > 0 then redis.call('PEXPIRE', k, ARGV[8]) end
    retain(P .. 'completed', tonumber(ARGV[9]), tonumber(ARGV[14]), now)
    event('completed', id)
  elseif outcome == 'release' then
    -- Given back unfinished (a worker shutting down): the attempt does not count.
    redis.call('HINCRBY', k, 'attempts', -1)
    to_wait(id)
    redis.call('LPUSH', P .. 'signal', 1)
    event('released', id)
  elseif outcome == 'retry' then
    redis.call('HSET', k, 'state', 'delayed', 'error', ARGV[6])
    redis.call('ZADD', P .. 'delayed', now + tonumber(ARGV[7]), id)
    event('retrying', id, ARGV[6])
  else
    redis.call('HSET', k, 'state', 'dead', 'error', ARGV[6], 'finished', now)
    redis.call('ZADD', P .. 'dead', now, id)
    retain(P .. 'dead', tonumber(ARGV[15]), tonumber(ARGV[16]), now)
    event('dead', id, ARGV[6])
  end
end
local next_job = false
if ARGV[10] == '1' then next_job = take(now, ARGV[11], ARGV[12], tonumber(ARGV[13])) end
return {status, next_job}
