-- GCRA (the virtual scheduling form): one cell per subject holds the theoretical arrival time
-- (TAT) in microseconds. A request is allowed when it arrives no earlier than TAT - burst * T.
-- KEYS[1] cell
-- ARGV[1] emission interval T (us), ARGV[2] burst, ARGV[3] now (us; 0: the server's clock)
-- Returns {allowed 0|1, remaining, reset us (until the bucket is full again), retry_after us}.
local t = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
if now == 0 then
  local time = redis.call('TIME')
  now = tonumber(time[1]) * 1000000 + tonumber(time[2])
end
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + t
local allow_at = new_tat - burst * t
if now < allow_at then
  return {0, 0, tat - now, allow_at - now}
end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
return {1, math.floor((now - allow_at) / t), new_tat - now, 0}
