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
local FINISH_FIELDS = {'token', 'state', 'cancel', 'unique', 'once'}
local ended, completed, done, released, cancels, dead = {}, {}, {}, {}, {}, {}
for b = 12, #ARGV - 4, 5 do
  local id, outcome, text = ARGV[b], ARGV[b + 2], ARGV[b + 3]
  local f = jmget(id, FINISH_FIELDS)
  if f[1] == ARGV[b + 1] and f[2] == 'active' then
    ended[#ended + 1] = id
    if outcome ~= 'done' and f[3] == '1' then outcome = 'cancel' end
    if outcome == 'done' then
      -- An emptied token, not a removed one: one call fewer, and no lock matches it. No
      -- expiry either: the completed set's retention below removes it by count and age.
      jset(id, {'state', 'completed', 'result', text, 'finished', now, 'token', ''})
      free_unique(f[4])
      completed[#completed + 1] = now
      completed[#completed + 1] = id
      done[#done + 1] = id
    elseif outcome == 'cancel' then
      cancelled(id, now, ttl)
      cancels[#cancels + 1] = id
    elseif outcome == 'release' then
      -- Given back unfinished (a worker shutting down): the attempt does not count; an
      -- at-most-once job that started is never started again.
      jdel(id, {'token'})
      jincr(id, 'attempts', -1)
      if f[5] == '1' then
        die(id, now, 'interrupted: its worker stopped', f[4])
        dead[#dead + 1] = id
      else
        to_wait(id)
        released[#released + 1] = id
      end
    elseif outcome == 'retry' then
      jdel(id, {'token'})
      jset(id, {'error', text})
      delay(id, now_n + tonumber(ARGV[b + 4]))
      event('retrying', id, text)
    else
      jdel(id, {'token'})
      die(id, now, text, f[4])
      dead[#dead + 1] = id
    end
  end
end
if #ended > 0 then redis.call('ZREM', K_active, unpack(ended)) end
local meta = queue_meta()
if #done > 0 then
  redis.call('ZADD', K_completed, unpack(completed))
  meta.marks.completed_since = lower_mark('completed_since', now_n, meta.marks.completed_since)
  count_minute('completed', #done, now_n)
  events('completed', done)
end
-- On every call, so that a worker with free slots (which calls each second) keeps it.
retain('completed', tonumber(ARGV[8]), tonumber(ARGV[9]), now_n, meta.marks.completed_since)
if #dead > 0 then retain('dead', tonumber(ARGV[10]), tonumber(ARGV[11]), now_n, meta.marks.dead_since) end
if #released > 0 then
  redis.call('LPUSH', K_signal, '1')
  events('released', released)
end
events('cancelled', cancels)
local out = take(now, deadline, token, worker, want, meta)
if ARGV[2] ~= '' then
  local lost = {}
  for t in string.gmatch(ARGV[2], '[^,]+') do lost[t] = true end
  for _, j in ipairs(active_jobs({'worker', 'token'})) do
    local t = j[3] and string.match(j[3], '^([^:]+):')
    if j[2] == worker and t and lost[t] then
      local id = j[1]
      local f = jmget(id, {'name', 'payload', 'attempts', 'max_attempts', 'timeout_ms', 'backoff'})
      redis.call('ZADD', K_active, 'XX', deadline, id)
      out[#out + 1] = {id, f[1], f[2], tonumber(f[3]), f[4], f[5], f[6], j[3]}
    end
  end
end
return out
