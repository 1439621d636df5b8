-- Removes a job that is not running. ARGV: 1 prefix, 2 id. Returns the state it had, 'active'
-- for a running job (left as it is: cancel it first), or false for no such job.
local id = ARGV[2]
local state = jget(id, 'state')
if not state then return false end
if state == 'active' then return 'active' end
forget(id)
event('removed', id, state)
return state
