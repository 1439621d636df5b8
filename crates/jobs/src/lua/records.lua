-- Reads records: ARGV: 1 prefix, 2 'job' or 'worker', 3.. ids. Returns for each id its fields
-- as field, value pairs (none for one that is gone).
local out = {}
for i = 3, #ARGV do
  local fv = {}
  if ARGV[2] == 'worker' then
    local v = rget(K_workers_info, ARGV[i], WORKER_FIELDS)
    for k = 1, #WORKER_FIELDS do
      if v[k] then
        fv[#fv + 1] = WORKER_FIELDS[k]
        fv[#fv + 1] = v[k]
      end
    end
  else
    local r = rec(ARGV[i])
    for k = 1, r and #FIELDS or 0 do
      if r[k] then
        fv[#fv + 1] = FIELDS[k]
        fv[#fv + 1] = r[k]
      end
    end
  end
  out[#out + 1] = fv
end
return out
