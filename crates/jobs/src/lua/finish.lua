-- Finishes a worker's jobs of this queue and takes its next ones, in one round trip.
-- ARGV: 1 prefix, 2 the tokens of this worker's calls whose reply it never got ('' none,
-- else joined by commas), 3 worker id, 4 lease of the taken jobs (ms), 5 jobs to take, 6 token
-- of the taken jobs (each gets <token>:<id>), 7 how long a cancelled job is kept (ms, 0 until
-- removed), 8 completed jobs kept (count), 9 completed jobs kept (age ms, 0 any), 10 dead jobs
-- kept (count, -1 any), 11 dead jobs kept (age ms, 0 any),
-- then five per finished job: id, lock token, outcome ('done' | 'retry' | 'fail' | 'release' |
-- 'cancel'; a job cancelled while it ran ends cancelled unless it is done), result or error
-- text, retry delay ms.
-- A job whose lock was lost (taken back by the sweep) keeps its state: its outcome is dropped,
-- so an outcome sent again after a lost reply changes nothing.
-- Returns what take() returns, followed by the jobs still held under the lost calls' tokens
-- (a call whose reply was lost may have taken them: the worker runs them now, under a renewed
-- lease, instead of leaving them to stall).
-- `now` stays a string where it is only stored: formatting numbers is much of a script's cost.
local now_n, now = server_now()
local worker, want, token = ARGV[3], tonumber(ARGV[5]), ARGV[6]
local lease = tonumber(ARGV[4])
local deadline = string.format('%.0f', now_n + lease)
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
      -- Given back unfinished (a worker shutting down): the attempt does not count; an
      -- at-most-once job that started is never started again.
      redis.call('HDEL', k, 'token')
      redis.call('HINCRBY', k, 'attempts', -1)
      if redis.call('HGET', k, 'once') == '1' then
        die(id, now, 'interrupted: its worker stopped', f[4])
        dead[#dead + 1] = id
      else
        to_wait(id)
        released[#released + 1] = id
      end
    elseif outcome == 'retry' then
      redis.call('HDEL', k, 'token')
      redis.call('HSET', k, 'error', text)
      delay(id, now_n + tonumber(ARGV[b + 4]))
      event('retrying', id, text)
    else
      redis.call('HDEL', k, 'token')
      die(id, now, text, f[4])
      dead[#dead + 1] = id
    end
  end
end
if #ended > 0 then
  redis.call('ZREM', P .. 'active', unpack(ended))
  redis.call('SREM', wk(worker) .. ':jobs', unpack(ended))
end
local meta = queue_meta()
if #done > 0 then
  redis.call('ZADD', P .. 'completed', unpack(completed))
  meta.marks.completed_since = lower_mark('completed_since', now_n, meta.marks.completed_since)
  count_minute('completed', #done, now_n)
  events('completed', done)
end
-- On every call, so that a worker with free slots (which calls each second) keeps it.
retain('completed', tonumber(ARGV[8]), tonumber(ARGV[9]), now_n, meta.marks.completed_since)
if #dead > 0 then retain('dead', tonumber(ARGV[10]), tonumber(ARGV[11]), now_n, meta.marks.dead_since) end
if #released > 0 then
  redis.call('LPUSH', P .. 'signal', '1')
  events('released', released)
end
events('cancelled', cancels)
local out = take(now, deadline, token, worker, want, meta)
if ARGV[2] ~= '' then
  local lost = {}
  for t in string.gmatch(ARGV[2], '[^,]+') do lost[t] = true end
  for _, id in ipairs(redis.call('SMEMBERS', wk(worker) .. ':jobs')) do
    local k = jk(id)
    local f = redis.call('HMGET', k, 'state', 'worker', 'token', 'name', 'payload', 'attempts', 'max_attempts', 'timeout_ms', 'backoff')
    local t = f[3] and string.match(f[3], '^([^:]+):')
    if f[1] == 'active' and f[2] == worker and t and lost[t] then
      redis.call('ZADD', P .. 'active', 'XX', deadline, id)
      out[#out + 1] = {id, f[4], f[5], tonumber(f[6]), f[7], f[8], f[9], f[3]}
    end
  end
end
return out
