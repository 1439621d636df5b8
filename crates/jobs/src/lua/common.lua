-- Shared by every script (prepended by the crate): key names, the wait queues, events.
-- ARGV[1] is always the queue's key prefix, ending in ':' and carrying the hash tag.
local P = ARGV[1]
local function jk(id) return P .. 'job:' .. id end
-- The Redis server's clock in ms since the epoch, as a number and as the string stored. Every
-- time the queue compares (leases, heartbeats, delays, schedules) is read here, never sent by a
-- client: a client whose clock is off cannot steal live jobs or keep dead ones.
local function server_now()
  local t = redis.call('TIME')
  local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  return ms, string.format('%.0f', ms)
end
local function wk(worker) return P .. 'worker:' .. worker end
-- Higher priority first, then first in, first out: (255 - priority) * 2^40 + seq.
local function wait_score(priority, seq) return (255 - tonumber(priority)) * 1099511627776 + tonumber(seq) end
-- The events a script call writes go out together, as one stream entry of event, id, detail
-- triples in order (one XADD a call, written by flush_events when the script's body returns;
-- sooner when many gather).
local pending = {}
local function flush_events()
  if #pending > 0 then
    redis.call('XADD', P .. 'events', 'MAXLEN', '~', '10000', '*', unpack(pending))
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

-- Waiting jobs are in P..'wait' (all of them, for counts and look-ups) and in their tenant's
-- own queue P..'wait:t:<tenant>' ('' for jobs without one). The tenants that have waiting jobs
-- take turns: P..'tenants' is their ring, P..'tenants:set' its members.
local function tk(tenant) return P .. 'wait:t:' .. tenant end
local function to_wait(id)
  local f = redis.call('HMGET', jk(id), 'priority', 'seq', 'tenant')
  local score, tenant = wait_score(f[1], f[2]), f[3] or ''
  redis.call('ZADD', P .. 'wait', score, id)
  redis.call('ZADD', tk(tenant), score, id)
  if redis.call('SADD', P .. 'tenants:set', tenant) == 1 then redis.call('LPUSH', P .. 'tenants', tenant) end
  redis.call('HSET', jk(id), 'state', 'waiting')
end
local function from_wait(id)
  local tenant = redis.call('HGET', jk(id), 'tenant') or ''
  redis.call('ZREM', P .. 'wait', id)
  redis.call('ZREM', tk(tenant), id)
end
local function drop_tenant(tenant)
  redis.call('LREM', P .. 'tenants', 1, tenant)
  redis.call('SREM', P .. 'tenants:set', tenant)
end
-- Up to n waiting jobs, the tenants served in turn: one job per turn, or all n at once when a
-- single tenant waits. A tenant whose queue ran empty leaves the ring when its turn finds it
-- empty. At most n + 32 turns: no unbounded loop. The ring is counted only when more than one
-- job is wanted (one job is one turn however many tenants wait).
local function pop_fair(n)
  local ids = {}
  local ring = n > 1 and redis.call('LLEN', P .. 'tenants') or -1
  for _ = 1, n + 32 do
    if #ids >= n or ring == 0 then break end
    local tenant = redis.call('LMOVE', P .. 'tenants', P .. 'tenants', 'RIGHT', 'LEFT')
    if not tenant then break end
    local popped = redis.call('ZPOPMIN', tk(tenant), ring == 1 and n - #ids or 1)
    if #popped == 0 then
      drop_tenant(tenant)
      if ring > 0 then ring = ring - 1 end
    end
    for i = 1, #popped, 2 do ids[#ids + 1] = popped[i] end
  end
  if #ids > 0 then
    redis.call('ZREM', P .. 'wait', unpack(ids))
    return ids
  end
  -- Waiting jobs outside any tenant queue (none, unless written by an older version).
  local popped = redis.call('ZPOPMIN', P .. 'wait')
  if #popped > 0 then
    local tenant = redis.call('HGET', jk(popped[1]), 'tenant') or ''
    redis.call('ZREM', tk(tenant), popped[1])
    ids[1] = popped[1]
  end
  return ids
end

-- A job's log lines (JobContext::log), kept and removed with it.
local function lk(id) return P .. 'logs:' .. id end

-- Ends a job as cancelled, kept for ttl_ms (0: kept until removed); the caller writes the event.
-- P..'cancelled' holds the cancelled jobs scored by when they go (+inf: never).
local function cancelled(id, now, ttl_ms)
  local k = jk(id)
  redis.call('HSET', k, 'state', 'cancelled', 'error', 'cancelled', 'finished', now)
  redis.call('HDEL', k, 'token', 'cancel', 'cancel_ttl')
  local unique = redis.call('HGET', k, 'unique')
  if unique and unique ~= '' then redis.call('DEL', P .. 'unique:' .. unique) end
  if tonumber(ttl_ms) > 0 then
    redis.call('PEXPIRE', k, ttl_ms)
    redis.call('PEXPIRE', lk(id), ttl_ms)
    redis.call('ZADD', P .. 'cancelled', tonumber(now) + tonumber(ttl_ms), id)
  else
    redis.call('ZADD', P .. 'cancelled', 'inf', id)
  end
end

-- Per-minute counts of jobs that completed or died (kind 'completed' or 'dead'), in a hash of
-- minute (since the epoch) to count; a day of minutes is kept.
local function count_minute(kind, n, now)
  local key = P .. 'metrics:' .. kind
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
  if mark == nil then mark = meta_time(redis.call('HGET', P .. 'meta', field)) end
  if mark and mark > at then
    redis.call('HSET', P .. 'meta', field, string.format('%.0f', at))
    return at
  end
  return mark
end
-- Writes mark `field` again after a look at `set`: its lowest score, or 'inf' when empty.
local function reset_mark(field, set)
  local first = redis.call('ZRANGE', set, 0, 0, 'WITHSCORES')
  redis.call('HSET', P .. 'meta', field, first[2] or 'inf')
end

-- Delays job `id` until `at` (ms).
local function delay(id, at)
  redis.call('HSET', jk(id), 'state', 'delayed')
  redis.call('ZADD', P .. 'delayed', at, id)
  lower_mark('delayed_at', at)
end

-- Moves due delayed jobs to the wait queues (at most 100 per call), when the first of them
-- may be due: `first` is the meta field 'delayed_at' as queue_meta read it.
local function promote(now, first)
  if first and tonumber(now) < first then return end
  local due = redis.call('ZRANGEBYSCORE', P .. 'delayed', '-inf', now, 'LIMIT', 0, 100)
  for _, id in ipairs(due) do
    redis.call('ZREM', P .. 'delayed', id)
    if redis.call('EXISTS', jk(id)) == 1 then to_wait(id) end
  end
  reset_mark('delayed_at', P .. 'delayed')
end

-- The queue's settings, read in one call: whether it is paused (Queue::pause), its rate limit
-- (Queue::rate_limit: {max, window ms}, or nil for none), and, by field name, when the oldest
-- completed and dead jobs finished and when the
-- first delayed job comes due: its time marks, as meta_time reads them.
local function queue_meta()
  local meta = redis.call('HMGET', P .. 'meta', 'rate_max', 'rate_ms', 'paused', 'completed_since', 'dead_since', 'delayed_at')
  local max = tonumber(meta[1] or '0')
  return {
    paused = meta[3] == '1',
    limit = max > 0 and {max, tonumber(meta[2])} or nil,
    marks = {completed_since = meta_time(meta[4]), dead_since = meta_time(meta[5]), delayed_at = meta_time(meta[6])},
  }
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
  for _, id in ipairs(redis.call('SMEMBERS', wk(worker) .. ':jobs')) do
    local g = redis.call('HGET', jk(id), 'group')
    if g and g ~= '' then groups[g] = true end
  end
  return groups
end

-- Takes up to `want` jobs for a worker, each locked until `deadline` with its own token
-- (`token`:<id>), under the queue's settings `meta` (queue_meta). `now` and `deadline` are
-- strings of ms: passed on as they are, they cost no number formatting. Returns
-- {wait ms, job, …}: the wait is what the rate limit asks before the next take (0: none); each
-- job is {id, name, payload, attempts, max_attempts, timeout_ms, backoff, token}.
local function take(now, deadline, token, worker, want, meta)
  local out = {0}
  if want <= 0 then return out end
  promote(now, meta.marks.delayed_at)
  local limit = meta.limit
  if meta.paused then return out end
  if limit then
    local used = tonumber(redis.call('GET', P .. 'rate') or '0')
    if used >= limit[1] then
      out[1] = math.max(redis.call('PTTL', P .. 'rate'), 1)
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
      local k = jk(id)
      local f = redis.call('HMGET', k, 'name', 'payload', 'max_attempts', 'timeout_ms', 'backoff', 'attempts', 'cancel', 'cancel_ttl', 'group', 'blame')
      local group = f[9] or ''
      local together = false
      if group ~= '' and f[1] and f[7] ~= '1' and tonumber(f[10] or '0') >= WHOLE / 2 then
        if not held then held = held_groups(worker) end
        together = held[group]
        held[group] = true
      end
      -- A job whose hash is gone (removed while it waited) is skipped; one cancelled while it
      -- ran and put back (by an older version) ends cancelled; one of a group this worker
      -- already runs goes back to waiting, below.
      if together then
        apart[#apart + 1] = id
      elseif f[7] == '1' then
        cancelled(id, now, f[8] or '0')
        event('cancelled', id)
      elseif f[1] then
        local attempts = tonumber(f[6] or '0') + 1
        local t = token .. ':' .. id
        redis.call('HSET', k, 'state', 'active', 'token', t, 'worker', worker, 'started', now, 'attempts', attempts)
        taken[#taken + 1] = id
        active[#active + 1] = deadline
        active[#active + 1] = id
        out[#out + 1] = {id, f[1], f[2], attempts, f[3], f[4], f[5], t}
      end
    end
    if #apart == 0 or #ids == 0 or #taken >= want then break end
  end
  if #taken > 0 then
    redis.call('ZADD', P .. 'active', unpack(active))
    redis.call('SADD', wk(worker) .. ':jobs', unpack(taken))
    events('active', taken, worker)
  end
  for _, id in ipairs(apart) do to_wait(id) end
  local started = popped - #apart
  if limit and started > 0 then
    local used = redis.call('INCRBY', P .. 'rate', started)
    if used == started then redis.call('PEXPIRE', P .. 'rate', limit[2]) end
    if used >= limit[1] then out[1] = math.max(redis.call('PTTL', P .. 'rate'), 1) end
  end
  return out
end

-- Ends a job in the dead letter with `why` (its event written here); frees its unique key, so
-- that the same work may be queued again.
local function die(id, now_s, why, unique)
  redis.call('HSET', jk(id), 'state', 'dead', 'error', why, 'finished', now_s)
  redis.call('ZADD', P .. 'dead', now_s, id)
  lower_mark('dead_since', tonumber(now_s))
  count_minute('dead', 1, tonumber(now_s))
  if unique and unique ~= '' then redis.call('DEL', P .. 'unique:' .. unique) end
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
  local k = jk(id)
  redis.call('ZREM', P .. 'active', id)
  redis.call('HSET', k, 'group', group)
  local f = redis.call('HMGET', k, 'worker', 'cancel', 'cancel_ttl', 'unique', 'once')
  if f[1] then redis.call('SREM', wk(f[1]) .. ':jobs', id) end
  redis.call('HDEL', k, 'token')
  redis.call('HINCRBY', k, 'attempts', -1)
  redis.call('HINCRBY', k, 'stalls', 1)
  if f[2] == '1' then
    cancelled(id, now_s, f[3] or '0')
    event('cancelled', id, why)
    return
  end
  if f[5] == '1' then
    die(id, now_s, 'interrupted: ' .. why, f[4])
    return
  end
  local blame = redis.call('HINCRBY', k, 'blame', charge)
  if blame > max_stalls * WHOLE then
    die(id, now_s, 'stalled too often', f[4])
  elseif blame >= WHOLE then
    local wait = math.min(1000 * 2 ^ (math.floor(blame / WHOLE) - 1), 60000)
    delay(id, now + wait)
    event('stalled', id, why)
  else
    to_wait(id)
    redis.call('LPUSH', P .. 'signal', '1')
    event('stalled', id, why)
  end
end

-- Removes the jobs `ids` of the finished set `set`, hashes and all.
local function remove_finished(set, ids)
  if #ids == 0 then return end
  local keys = {}
  for _, id in ipairs(ids) do
    keys[#keys + 1] = jk(id)
    keys[#keys + 1] = lk(id)
  end
  redis.call('ZREM', set, unpack(ids))
  redis.call('DEL', unpack(keys))
end

-- Removes job `id` whatever its state but active: out of every set, its hash, its logs, and
-- its unique key when that still names it. Returns the state it had, or false for no job.
local function forget(id)
  local k = jk(id)
  local f = redis.call('HMGET', k, 'state', 'unique')
  if f[1] == 'waiting' then from_wait(id) end
  for _, set in ipairs({'delayed', 'completed', 'dead', 'cancelled'}) do
    redis.call('ZREM', P .. set, id)
  end
  if f[2] and f[2] ~= '' and redis.call('GET', P .. 'unique:' .. f[2]) == id then
    redis.call('DEL', P .. 'unique:' .. f[2])
  end
  redis.call('DEL', k, lk(id))
  return f[1] or false
end
-- Keeps at most max_count jobs in the finished set `name` ('completed' or 'dead', scored by
-- when they finished; a negative count: no limit) and none older than max_age_ms (0: no
-- limit); removes at most 100 of each per call. The count may run over by max_count / 64 so
-- that the oldest go in batches, not one per call. The age is looked at only once the oldest
-- job may be too old: `since` is the set's time mark (`name`_since; nothing puts older jobs in
-- these sets, and removing jobs only makes it earlier than it need be, which costs one look).
local function retain(name, max_count, max_age_ms, now, since)
  local set = P .. name
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
-- field, value pairs of the job hash to the end. Returns its id (an existing one for a
-- duplicate unique key or id).
local function add_job(first)
  local now, now_s = server_now()
  local id, run_at, priority, unique =
    ARGV[first], now + tonumber(ARGV[first + 1]), ARGV[first + 2], ARGV[first + 3]
  if redis.call('EXISTS', jk(id)) == 1 then return id end
  if unique ~= '' then
    local existing = redis.call('GET', P .. 'unique:' .. unique)
    if existing and redis.call('EXISTS', jk(existing)) == 1 then return existing end
    redis.call('SET', P .. 'unique:' .. unique, id)
  end
  local seq = redis.call('INCR', P .. 'seq')
  local fields = {}
  for i = first + 4, #ARGV do fields[#fields + 1] = ARGV[i] end
  redis.call('HSET', jk(id), unpack(fields))
  redis.call('HSET', jk(id), 'seq', seq, 'priority', priority, 'attempts', '0', 'created', now_s, 'unique', unique)
  if run_at > now then
    delay(id, run_at)
  else
    to_wait(id)
  end
  redis.call('LPUSH', P .. 'signal', '1')
  redis.call('LTRIM', P .. 'signal', '0', '63')
  event('added', id)
  return id
end
