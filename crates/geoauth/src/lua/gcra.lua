-- GCRA (the virtual scheduling form): one cell per subject holds the theoretical arrival time
-- (TAT) in microseconds. A request is allowed when it arrives no earlier than TAT - burst * T.
-- KEYS[1] cell
-- ARGV[1] emission interval T (us), ARGV[2] burst, ARGV[3] now (us; 0: the server's clock),
-- ARGV[4] requests already allowed by a process deciding locally, counted first and
-- unconditionally (0 when absent).
-- Returns {allowed 0|1, remaining, reset us (until the bucket is full again), retry_after us,
-- the TAT after this request, now}.
local t = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local counted = tonumber(ARGV[4] or '0')
if now == 0 then
  local time = redis.call('TIME')
  now = tonumber(time[1]) * 1000000 + tonumber(time[2])
end
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
tat = tat + counted * t
local new_tat = tat + t
local allow_at = new_tat - burst * t
if now < allow_at then
  if counted > 0 then
    redis.call('SET', KEYS[1], string.format('%d', tat), 'PX', math.ceil((tat - now) / 1000))
  end
  return {0, 0, tat - now, allow_at - now, tat, now}
end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
return {1, math.floor((now - allow_at) / t), new_tat - now, 0, new_tat, now}
