-- Look for job ARGV[2] among at most ARGV[3] stream entries after ARGV[1] ('-' or '(id').
-- KEYS[1] stream
-- Returns {1, entry id} when found, {2, last entry id read} to go on from, {0, nil} at the end.
local count = tonumber(ARGV[3])
local entries = redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', count)
for _, e in ipairs(entries) do
  local f = e[2]
  for i = 1, #f, 2 do
    if f[i] == 'id' then
      if f[i + 1] == ARGV[2] then return {1, e[1]} end
      break
    end
  end
end
if #entries < count then return {0, false} end
return {2, entries[#entries][1]}
