-- Shared by every script (prepended by the crate after the locals K_meta, K_jobs, … that name
-- the queue's keys, KEYS[1], KEYS[2], …: every key a script touches is one of them). ARGV[1]
-- is the queue's key prefix, which names no key here.
-- A job is one field of K_jobs, its id, whose value is its record packed with MessagePack: its
-- fields by their place in FIELDS, strings all (nil for one it lacks; the fields most jobs have
-- come first, so that the record is a short array, or a map of place to value where one in the
-- middle is missing). One small value per job keeps the hash's lookups and memory low. A call
-- reads each job it touches once (rec) and writes those it changed once, in one HSET, when its
-- body returns (save_jobs).
local FIELDS = {'name', 'payload', 'max_attempts', 'backoff', 'timeout_ms', 'tenant', 'once',
  'seq', 'priority', 'attempts', 'created', 'unique', 'state', 'token', 'worker', 'started',
  'finished', 'result', 'error', 'repeat', 'progress', 'cancel', 'cancel_ttl', 'group', 'blame',
  'stalls', 'logs'}
-- A field's place in the record, by name.
local AT = {}
for i = 1, #FIELDS do AT[FIELDS[i]] = i end
local function at(name) return AT[name] or error('no job field ' .. tostring(name)) end
local jobs, dirty, is_dirty = {}, {}, {}
-- Job `id`'s record (cached), or false when the queue holds no such job.
local function rec(id)
  local r = jobs[id]
  if r == nil then
    local packed = redis.call('HGET', K_jobs, id)
    r = packed and cmsgpack.unpack(packed) or false
    jobs[id] = r
  end
  return r
end
local function changed(id)
  if not is_dirty[id] then
    is_dirty[id] = true
    dirty[#dirty + 1] = id
  end
end
local function save_jobs()
  local args = {}
  for _, id in ipairs(dirty) do
    local r = jobs[id]
    if r then
      args[#args + 1] = id
      args[#args + 1] = cmsgpack.pack(r)
      if #args >= 2000 then
        redis.call('HSET', K_jobs, unpack(args))
        args = {}
      end
    end
  end
  if #args > 0 then redis.call('HSET', K_jobs, unpack(args)) end
  dirty, is_dirty = {}, {}
end
-- Job `id`'s field `name`, or false (as HGET gives a missing field).
local function jget(id, name)
  local r = rec(id)
  return r and r[at(name)] or false
end
-- Job `id`'s fields `names`, as HMGET gives them.
local function jmget(id, names)
  local r, out = rec(id), {}
  for i = 1, #names do out[i] = r and r[at(names[i])] or false end
  return out
end
-- Sets fields of job `id`: `fv` is field, value, field, value, … (values stored as strings).
local function jset(id, fv)
  local r = rec(id)
  if not r then
    r = {}
    jobs[id] = r
  end
  for i = 1, #fv, 2 do r[at(fv[i])] = tostring(fv[i + 1]) end
  changed(id)
end
local function jdel(id, names)
  local r = rec(id)
  if not r then return end
  for i = 1, #names do r[at(names[i])] = nil end
  changed(id)
end
-- Adds `by` to job `id`'s number field `name`; returns the sum (as HINCRBY does).
local function jincr(id, name, by)
  local r, i = rec(id), at(name)
  local v = tonumber(r[i] or '0') + by
  r[i] = tostring(v)
  changed(id)
  return v
end
-- Whether the queue holds job `id`.
local function exists(id) return rec(id) ~= false end
-- The hash fields of record `id`'s fields `names` (K_workers_info, K_repeat: '<id>:<field>').
local function record_fields(id, names)
  local f = {}
  for i = 1, #names do f[i] = id .. ':' .. names[i] end
  return f
end
-- Fields of record `id` in hash `key`, as HMGET gives them.
local function rget(key, id, names) return redis.call('HMGET', key, unpack(record_fields(id, names))) end
-- Sets fields of record `id` in hash `key`: `fv` is field, value, field, value, …
local function rset(key, id, fv)
  for i = 1, #fv, 2 do fv[i] = id .. ':' .. fv[i] end
  redis.call('HSET', key, unpack(fv))
end
-- Deletes the fields `names` of record `id` in hash `key`.
local function rdel(key, id, names) redis.call('HDEL', key, unpack(record_fields(id, names))) end
-- A worker's record is the fields '<worker>:<field>' of K_workers_info.
local WORKER_FIELDS = {'beat', 'expires', 'started', 'host', 'pid', 'queues'}
-- A repeatable job's definition is the fields '<key>:<field>' of K_repeat.
local REPEAT_FIELDS = {'next', 'name', 'fields', 'priority', 'schedule'}
-- The Redis server's clock in ms since the epoch, as a number and as the string stored. Every
-- time the queue compares (leases, heartbeats, delays, schedules) is read here, never sent by a
-- client: a client whose clock is off cannot steal live jobs or keep dead ones.
local function server_now()
  local t = redis.call('TIME')
  local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  return ms, string.format('%.0f', ms)
end
-- Higher priority first, then first in, first out: (255 - priority) * 2^40 + seq.
local function wait_score(priority, seq) return (255 - tonumber(priority)) * 1099511627776 + tonumber(seq) end
-- The events a script call writes go out together, as one stream entry of event, id, detail
-- triples in order (one XADD a call, written by flush_events when the script's body returns;
-- sooner when many gather).
local pending = {}
local function flush_events()
  if #pending > 0 then
    redis.call('XADD', K_events, 'MAXLEN', '~', '10000', '*', unpack(pending))
    pending = {}
  end
end
local function event(kind, id, extra)
  local n = #pending
  pending[n + 1], pending[n + 2], pending[n + 3] = 'event', kind, 'id'
  pending[n + 4], pending[n + 5], pending[n + 6] = id, 'detail', extra or ''
  if n >= 3000 then flush_events() end
end
-- One entry for the same event of several jobs (written by one script): their ids joined by
-- commas (job ids have none).
local function events(kind, ids, extra)
  if #ids > 0 then event(kind, table.concat(ids, ','), extra) end
end

-- Waiting jobs are in K_wait (all of them, for counts and look-ups, scored by wait_score) and
-- in their tenant's own queue ('' for jobs without one): the members of K_twait that begin with
-- the tenant's tag, all scored 0 and so in lexical order, which the score written in 15 digits
-- after the tag makes the tenant's order. The tenants that have waiting jobs take turns:
-- K_tenants is their ring, K_tenants_set its members.
local function tag(tenant) return #tenant .. ':' .. tenant .. ':' end
local function twait_member(tenant, score, id)
  return tag(tenant) .. string.format('%015.0f', score) .. id
end
local function to_wait(id)
  local f = jmget(id, {'priority', 'seq', 'tenant'})
  local score, tenant = wait_score(f[1], f[2]), f[3] or ''
  redis.call('ZADD', K_wait, score, id)
  redis.call('ZADD', K_twait, 0, twait_member(tenant, score, id))
  if redis.call('SADD', K_tenants_set, tenant) == 1 then redis.call('LPUSH', K_tenants, tenant) end
  jset(id, {'state', 'waiting'})
end
local function from_wait(id)
  local f = jmget(id, {'priority', 'seq', 'tenant'})
  redis.call('ZREM', K_wait, id)
  if f[1] then redis.call('ZREM', K_twait, twait_member(f[3] or '', wait_score(f[1], f[2]), id)) end
end
local function drop_tenant(tenant)
  redis.call('LREM', K_tenants, 1, tenant)
  redis.call('SREM', K_tenants_set, tenant)
end
-- Up to n waiting jobs, the tenants served in turn: one job per turn, or all n at once when a
-- single tenant waits. A tenant whose queue ran empty leaves the ring when its turn finds it
-- empty. At most n + 32 turns: no unbounded loop. The ring is counted only when more than one
-- job is wanted (one job is one turn however many tenants wait).
local function pop_fair(n)
  local ids = {}
  local ring = n > 1 and redis.call('LLEN', K_tenants) or -1
  for _ = 1, n + 32 do
    if #ids >= n or ring == 0 then break end
    local tenant = redis.call('LMOVE', K_tenants, K_tenants, 'RIGHT', 'LEFT')
    if not tenant then break end
    local t = tag(tenant)
    local popped = redis.call('ZRANGEBYLEX', K_twait, '[' .. t, '(' .. t .. ':', 'LIMIT', 0, ring == 1 and n - #ids or 1)
    if #popped == 0 then
      drop_tenant(tenant)
      if ring > 0 then ring = ring - 1 end
    else
      redis.call('ZREM', K_twait, unpack(popped))
      for i = 1, #popped do ids[#ids + 1] = string.sub(popped[i], #t + 16) end
    end
  end
  if #ids > 0 then redis.call('ZREM', K_wait, unpack(ids)) end
  return ids
end

-- A job's log lines (JobContext::log) are members of K_logs, all scored 0: '<id>\n', the line's
-- number in 10 digits, then the line; kept and removed with the job. The job's field 'logs'
-- counts its lines.
local function log_line(id, n, line) return id .. '\n' .. string.format('%010d', n) .. (line or '') end
local function drop_logs(id) redis.call('ZREMRANGEBYLEX', K_logs, '[' .. id .. '\n', '(' .. id .. '\v') end
-- Deletes jobs `ids`: their records and logs (out of the sets: the caller's part).
local function drop_jobs(ids)
  if #ids == 0 then return end
  local logs = redis.call('EXISTS', K_logs) == 1
  for _, id in ipairs(ids) do
    if logs then drop_logs(id) end
    jobs[id] = false
  end
  for s = 1, #ids, 1000 do
    redis.call('HDEL', K_jobs, unpack(ids, s, math.min(s + 999, #ids)))
  end
end

-- Frees unique key `unique` (when set), so that the same work may be queued again.
local function free_unique(unique)
  if unique and unique ~= '' then redis.call('HDEL', K_unique, unique) end
end

-- Ends a job as cancelled, kept for ttl_ms (0: kept until removed); the caller writes the event.
-- K_cancelled holds the cancelled jobs scored by when they go (+inf: never); the sweep removes
-- them then.
local function cancelled(id, now, ttl_ms)
  jset(id, {'state', 'cancelled', 'error', 'cancelled', 'finished', now})
  jdel(id, {'token', 'cancel', 'cancel_ttl'})
  free_unique(jget(id, 'unique'))
  if tonumber(ttl_ms) > 0 then
    redis.call('ZADD', K_cancelled, tonumber(now) + tonumber(ttl_ms), id)
  else
    redis.call('ZADD', K_cancelled, 'inf', id)
  end
end

-- Per-minute counts of jobs that completed or died (kind 'completed' or 'dead'), in a hash of
-- minute (since the epoch) to count; a day of minutes is kept.
local function count_minute(kind, n, now)
  local key = kind == 'completed' and K_metrics_completed or K_metrics_dead
  local minute = math.floor(now / 60000)
  if redis.call('HINCRBY', key, minute, n) == n then
    -- The first count of a minute: drop the minutes older than a day.
    for _, m in ipairs(redis.call('HKEYS', key)) do
      if tonumber(m) <= minute - 1440 then redis.call('HDEL', key, m) end
    end
  end
end

-- Time marks in the queue's meta hash, one per time-scored set: 'delayed_at' (when the first
-- delayed job comes due), 'completed_since' and 'dead_since' (when the oldest finished job
-- finished). A mark is that set's lowest score or earlier, 'inf' when the set is empty, absent
-- when unknown; the set is looked at only once its mark says something may be due there.
-- A mark's value as a number: math.huge for 'inf', nil when absent.
local function meta_time(v)
  if v == 'inf' then return math.huge end
  return tonumber(v or '')
end
-- Lowers mark `field` to `at` (ms) for a job put in its set with that score; an unknown mark
-- stays unknown. `mark` is its value when already read (nil: read here). Returns the mark.
local function lower_mark(field, at, mark)
  if mark == nil then mark = meta_time(redis.call('HGET', K_meta, field)) end
  if mark and mark > at then
    redis.call('HSET', K_meta, field, string.format('%.0f', at))
    return at
  end
  return mark
end
-- Writes mark `field` again after a look at `set`: its lowest score, or 'inf' when empty.
local function reset_mark(field, set)
  local first = redis.call('ZRANGE', set, 0, 0, 'WITHSCORES')
  redis.call('HSET', K_meta, field, first[2] or 'inf')
end

-- Delays job `id` until `at` (ms).
local function delay(id, at)
  jset(id, {'state', 'delayed'})
  redis.call('ZADD', K_delayed, at, id)
  lower_mark('delayed_at', at)
end

-- Moves due delayed jobs to the wait queues (at most 100 per call), when the first of them
-- may be due: `first` is the meta field 'delayed_at' as queue_meta read it.
local function promote(now, first)
  if first and tonumber(now) < first then return end
  local due = redis.call('ZRANGEBYSCORE', K_delayed, '-inf', now, 'LIMIT', 0, 100)
  for _, id in ipairs(due) do
    redis.call('ZREM', K_delayed, id)
    if exists(id) then to_wait(id) end
  end
  reset_mark('delayed_at', K_delayed)
end

-- The queue's settings, read in one call: whether it is paused (Queue::pause), its rate limit
-- (Queue::rate_limit: {max, window ms}, or nil for none), and, by field name, when the oldest
-- completed and dead jobs finished and when the first delayed job comes due: its time marks,
-- as meta_time reads them.
local function queue_meta()
  local meta = redis.call('HMGET', K_meta, 'rate_max', 'rate_ms', 'paused', 'completed_since', 'dead_since', 'delayed_at')
  local max = tonumber(meta[1] or '0')
  return {
    paused = meta[3] == '1',
    limit = max > 0 and {max, tonumber(meta[2])} or nil,
    marks = {completed_since = meta_time(meta[4]), dead_since = meta_time(meta[5]), delayed_at = meta_time(meta[6])},
  }
end

-- Every active job with its fields `names`: a list of {id, value, …}.
-- The jobs a worker holds are found here (their field 'worker'), when a worker died, a reply
-- was lost or a death group matters: rare, so no set per worker is kept on every take.
local function active_jobs(names)
  local out = {}
  for _, id in ipairs(redis.call('ZRANGE', K_active, 0, -1)) do
    local f = jmget(id, names)
    table.insert(f, 1, id)
    out[#out + 1] = f
  end
  return out
end

-- A stall is charged in millionths. A worker that died holding k jobs charges each of them 1/k:
-- one of them may have killed it, or none (a kill storm, a node lost), and a poison job still
-- reaches the bound after at most k times as many deaths. A lock that expired under a live
-- worker charges its one job in full.
local WHOLE = 1000000

-- The jobs that were running together in a worker that died form a group (the dead worker's
-- id, in their field 'group'). A worker takes at most one job of a group at a time once they
-- have been charged half a stall (a second death together, or a first one among few): a job
-- that kills its workers soon runs without the jobs that died with it, so that they stop
-- sharing its blame, while the many jobs a kill storm interrupts once keep running side by
-- side. The groups of the jobs `worker` runs, as a set.
local function held_groups(worker)
  local groups = {}
  for _, j in ipairs(active_jobs({'worker', 'group'})) do
    if j[2] == worker and j[3] and j[3] ~= '' then groups[j[3]] = true end
  end
  return groups
end

-- Takes up to `want` jobs for a worker, each locked until `deadline` with its own token
-- (`token`:<id>), under the queue's settings `meta` (queue_meta). `now` and `deadline` are
-- strings of ms: passed on as they are, they cost no number formatting. Returns
-- {wait ms, job, …}: the wait is what the rate limit asks before the next take (0: none); each
-- job is {id, name, payload, attempts, max_attempts, timeout_ms, backoff, token}.
local TAKEN_FIELDS = {'name', 'payload', 'max_attempts', 'timeout_ms', 'backoff', 'attempts', 'cancel', 'cancel_ttl', 'group', 'blame'}
local function take(now, deadline, token, worker, want, meta)
  local out = {0}
  if want <= 0 then return out end
  promote(now, meta.marks.delayed_at)
  local limit = meta.limit
  if meta.paused then return out end
  if limit then
    local used = tonumber(redis.call('GET', K_rate) or '0')
    if used >= limit[1] then
      out[1] = math.max(redis.call('PTTL', K_rate), 1)
      return out
    end
    want = math.min(want, limit[1] - used)
  end
  local taken, active, apart = {}, {}, {}
  local popped = 0
  -- The death groups this worker holds jobs of (read when a job taken has one).
  local held = nil
  -- Two rounds at most: the second fills the slots of the jobs the first kept apart.
  for _ = 1, 2 do
    local ids = pop_fair(want - #taken)
    popped = popped + #ids
    for _, id in ipairs(ids) do
      local f = jmget(id, TAKEN_FIELDS)
      local group = f[9] or ''
      local together = false
      if group ~= '' and f[1] and f[7] ~= '1' and tonumber(f[10] or '0') >= WHOLE / 2 then
        if not held then held = held_groups(worker) end
        together = held[group]
        held[group] = true
      end
      -- A job that is gone (removed while it waited) is skipped; one cancelled while it ran
      -- and put back (by an older version) ends cancelled; one of a group this worker already
      -- runs goes back to waiting, below.
      if together then
        apart[#apart + 1] = id
      elseif f[7] == '1' then
        cancelled(id, now, f[8] or '0')
        event('cancelled', id)
      elseif f[1] then
        local attempts = tonumber(f[6] or '0') + 1
        local t = token .. ':' .. id
        jset(id, {'state', 'active', 'token', t, 'worker', worker, 'started', now, 'attempts', attempts})
        taken[#taken + 1] = id
        active[#active + 1] = deadline
        active[#active + 1] = id
        out[#out + 1] = {id, f[1], f[2], attempts, f[3], f[4], f[5], t}
      end
    end
    if #apart == 0 or #ids == 0 or #taken >= want then break end
  end
  if #taken > 0 then
    redis.call('ZADD', K_active, unpack(active))
    events('active', taken, worker)
  end
  for _, id in ipairs(apart) do to_wait(id) end
  local started = popped - #apart
  if limit and started > 0 then
    local used = redis.call('INCRBY', K_rate, started)
    if used == started then redis.call('PEXPIRE', K_rate, limit[2]) end
    if used >= limit[1] then out[1] = math.max(redis.call('PTTL', K_rate), 1) end
  end
  return out
end

-- Ends a job in the dead letter with `why` (its event written here); frees its unique key, so
-- that the same work may be queued again.
local function die(id, now_s, why, unique)
  jset(id, {'state', 'dead', 'error', why, 'finished', now_s})
  redis.call('ZADD', K_dead, now_s, id)
  lower_mark('dead_since', tonumber(now_s))
  count_minute('dead', 1, tonumber(now_s))
  free_unique(unique)
  event('dead', id, why)
end


-- An active job whose worker is gone or whose lock expired. Its run was interrupted: that is a
-- stall, not an attempt (`attempts` counts the runs that ended). A cancelled job ends cancelled;
-- an at-most-once job goes to the dead letter as interrupted; a job charged more than
-- max_stalls whole stalls goes there as stalled too often. Otherwise it runs again: at once
-- while it has been charged less than one whole stall, then after a wait that doubles with each
-- whole stall (1 s, 2 s, 4 s, … at most a minute), so that a job that kills its workers kills
-- few of them, and slowly. `group` names the jobs that died together ('' for one alone).
local function stall(id, now, now_s, max_stalls, why, charge, group)
  redis.call('ZREM', K_active, id)
  local f = jmget(id, {'cancel', 'cancel_ttl', 'unique', 'once'})
  jset(id, {'group', group})
  jdel(id, {'token'})
  jincr(id, 'attempts', -1)
  jincr(id, 'stalls', 1)
  if f[1] == '1' then
    cancelled(id, now_s, f[2] or '0')
    event('cancelled', id, why)
    return
  end
  if f[4] == '1' then
    die(id, now_s, 'interrupted: ' .. why, f[3])
    return
  end
  local blame = jincr(id, 'blame', charge)
  if blame > max_stalls * WHOLE then
    die(id, now_s, 'stalled too often', f[3])
  elseif blame >= WHOLE then
    local wait = math.min(1000 * 2 ^ (math.floor(blame / WHOLE) - 1), 60000)
    delay(id, now + wait)
    event('stalled', id, why)
  else
    to_wait(id)
    redis.call('LPUSH', K_signal, '1')
    event('stalled', id, why)
  end
end

-- Removes the jobs `ids` of the finished set `set`, fields, logs and all.
local function remove_finished(set, ids)
  if #ids == 0 then return end
  redis.call('ZREM', set, unpack(ids))
  drop_jobs(ids)
end

-- Removes job `id` whatever its state but active: out of every set, its fields, its logs, and
-- its unique key when that still names it. Returns the state it had, or false for no job.
local function forget(id)
  local f = jmget(id, {'state', 'unique'})
  if f[1] == 'waiting' then from_wait(id) end
  for _, set in ipairs({K_delayed, K_completed, K_dead, K_cancelled}) do
    redis.call('ZREM', set, id)
  end
  if f[2] and f[2] ~= '' and redis.call('HGET', K_unique, f[2]) == id then
    redis.call('HDEL', K_unique, f[2])
  end
  drop_jobs({id})
  return f[1] or false
end
-- Keeps at most max_count jobs in the finished set `name` ('completed' or 'dead', scored by
-- when they finished; a negative count: no limit) and none older than max_age_ms (0: no
-- limit); removes at most 100 of each per call. The count may run over by max_count / 64 so
-- that the oldest go in batches, not one per call. The age is looked at only once the oldest
-- job may be too old: `since` is the set's time mark (`name`_since; nothing puts older jobs in
-- these sets, and removing jobs only makes it earlier than it need be, which costs one look).
local function retain(name, max_count, max_age_ms, now, since)
  local set = name == 'completed' and K_completed or K_dead
  if max_count >= 0 then
    local extra = redis.call('ZCARD', set) - max_count
    if extra > math.floor(max_count / 64) then
      remove_finished(set, redis.call('ZRANGE', set, 0, math.min(extra, 100) - 1))
    end
  end
  if max_age_ms <= 0 or (since and now - since <= max_age_ms) then return end
  remove_finished(set, redis.call('ZRANGEBYSCORE', set, '-inf', now - max_age_ms, 'LIMIT', 0, 100))
  reset_mark(name .. '_since', set)
end

-- Adds a job: ARGV from `first`: id, delay ms (0: none), priority, unique key ('' none), then
-- field, value pairs of the job to the end. Returns its id (an existing one for a duplicate
-- unique key or id).
local function add_job(first)
  local now, now_s = server_now()
  local id, run_at, priority, unique =
    ARGV[first], now + tonumber(ARGV[first + 1]), ARGV[first + 2], ARGV[first + 3]
  if exists(id) then return id end
  if unique ~= '' then
    local existing = redis.call('HGET', K_unique, unique)
    if existing and exists(existing) then return existing end
    redis.call('HSET', K_unique, unique, id)
  end
  local seq = redis.call('INCR', K_seq)
  local fields = {'seq', seq, 'priority', priority, 'attempts', '0', 'created', now_s, 'unique', unique}
  for i = first + 4, #ARGV do fields[#fields + 1] = ARGV[i] end
  jset(id, fields)
  if run_at > now then
    delay(id, run_at)
  else
    to_wait(id)
  end
  redis.call('LPUSH', K_signal, '1')
  redis.call('LTRIM', K_signal, '0', '63')
  event('added', id)
  return id
end
