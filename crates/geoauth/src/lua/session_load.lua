-- Loads a session presented on a channel and extends its idle expiry.
-- KEYS[1] session; ARGV[1] channel, ARGV[2] idle ms, ARGV[3] now ms
-- Returns 0 (none), 2 (wrong channel: refused) or {1, field, value, ...}.
local fields = redis.call('HGETALL', KEYS[1])
if #fields == 0 then return 0 end
local s = {}
for i = 1, #fields, 2 do s[fields[i]] = fields[i + 1] end
if s['channel'] ~= ARGV[1] then return 2 end
local left = tonumber(s['absolute']) - tonumber(ARGV[3])
if left <= 0 then
  redis.call('DEL', KEYS[1])
  return 0
end
redis.call('HSET', KEYS[1], 'last_seen', ARGV[3])
redis.call('PEXPIRE', KEYS[1], math.min(tonumber(ARGV[2]), left))
local out = {1}
for i = 1, #fields do out[#out + 1] = fields[i] end
return out
