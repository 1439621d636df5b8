-- Finishes a worker's jobs of this queue and takes its next ones, in one round trip.
-- ARGV: 1 prefix, 2 now ms, 3 worker id, 4 lock deadline of the taken jobs (ms), 5 jobs to
-- take, 6 token of the taken jobs (each gets <token>:<id>), 7 how long a cancelled job is kept
-- (ms, 0 until removed), 8 completed jobs kept (count), 9 completed jobs kept (age ms, 0 any),
-- 10 dead jobs kept (count, -1 any), 11 dead jobs kept (age ms, 0 any),
-- then five per finished job: id, lock token, outcome ('done' | 'retry' | 'fail' | 'release' |
-- 'cancel'; a job cancelled while it ran ends cancelled unless it is done), result or error
-- text, retry delay ms.
-- A job whose lock was lost (taken back by the sweep) keeps its state: its outcome is dropped.
-- Returns what take() returns.
-- `now` stays a string where it is only stored: formatting numbers is much of a script's cost.
local now, worker, deadline, want, token = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6]
local ttl = ARGV[7]
local ended, completed, done, released, cancels, dead = {}, {}, {}, {}, {}, {}
for b = 12, #ARGV - 4, 5 do
  local id, outcome, text = ARGV[b], ARGV[b + 2], ARGV[b + 3]
  local k = jk(id)
  local f = redis.call('HMGET', k, 'token', 'state', 'cancel', 'unique')
  if f[1] == ARGV[b + 1] and f[2] == 'active' then
    ended[#ended + 1] = id
    if outcome ~= 'done' and f[3] == '1' then outcome = 'cancel' end
    if outcome == 'done' then
      -- An emptied token, not a removed one: one call fewer, and no lock matches it. No
      -- expiry either: the completed set's retention below removes it by count and age.
      redis.call('HSET', k, 'state', 'completed', 'result', text, 'finished', now, 'token', '')
      if f[4] and f[4] ~= '' then redis.call('DEL', P .. 'unique:' .. f[4]) end
      completed[#completed + 1] = now
      completed[#completed + 1] = id
      done[#done + 1] = id
    elseif outcome == 'cancel' then
      cancelled(id, now, ttl)
      cancels[#cancels + 1] = id
    elseif outcome == 'release' then
      -- Given back unfinished (a worker shutting down): the attempt does not count.
      redis.call('HDEL', k, 'token')
      redis.call('HINCRBY', k, 'attempts', -1)
      to_wait(id)
      released[#released + 1] = id
    elseif outcome == 'retry' then
      redis.call('HDEL', k, 'token')
      redis.call('HSET', k, 'state', 'delayed', 'error', text)
      redis.call('ZADD', P .. 'delayed', tonumber(now) + tonumber(ARGV[b + 4]), id)
      event('retrying', id, text)
    else
      redis.call('HDEL', k, 'token')
      redis.call('HSET', k, 'state', 'dead', 'error', text, 'finished', now)
      redis.call('ZADD', P .. 'dead', now, id)
      -- A dead job no longer holds its unique key: the same work may be queued again.
      if f[4] and f[4] ~= '' then redis.call('DEL', P .. 'unique:' .. f[4]) end
      dead[#dead + 1] = id
      event('dead', id, text)
    end
  end
end
if #ended > 0 then
  redis.call('ZREM', P .. 'active', unpack(ended))
  redis.call('SREM', wk(worker) .. ':jobs', unpack(ended))
end
if #done > 0 then
  redis.call('ZADD', P .. 'completed', unpack(completed))
  events('completed', done)
end
-- On every call, so that a worker with free slots (which calls each second) keeps it.
retain(P .. 'completed', tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(now))
if #dead > 0 then retain(P .. 'dead', tonumber(ARGV[10]), tonumber(ARGV[11]), tonumber(now)) end
if #released > 0 then
  redis.call('LPUSH', P .. 'signal', '1')
  events('released', released)
end
events('cancelled', cancels)
return take(now, deadline, token, worker, want)
