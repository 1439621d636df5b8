-- Ends the listed sessions of a user. KEYS[1] user's sessions, KEYS[2..] sessions;
-- ARGV[i] the digest of KEYS[i + 1]. Returns how many sessions are still listed, so the caller
-- repeats until none are (each call is bounded by its batch).
for i = 2, #KEYS do
  redis.call('DEL', KEYS[i])
  redis.call('ZREM', KEYS[1], ARGV[i - 1])
end
return redis.call('ZCARD', KEYS[1])
