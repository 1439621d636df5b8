-- Reads records: ARGV: 1 prefix, 2 'job' or 'worker', 3.. ids. Returns for each id its fields
-- as field, value pairs (none for one that is gone).
local names = ARGV[2] == 'worker' and WORKER_FIELDS or FIELDS
local out = {}
for i = 3, #ARGV do
  local v
  if ARGV[2] == 'worker' then v = rget(K_workers_info, ARGV[i], names) else v = jmget(ARGV[i], names) end
  local fv = {}
  for k = 1, #names do
    if v[k] then
      fv[#fv + 1] = names[k]
      fv[#fv + 1] = v[k]
    end
  end
  out[#out + 1] = fv
end
return out
