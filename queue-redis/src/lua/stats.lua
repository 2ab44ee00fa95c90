-- Queue depth in O(1)/O(log n) commands.
-- KEYS[1] stream, KEYS[2] scheduled zset, KEYS[3] dead zset; ARGV[1] group
-- Returns {ready, running, scheduled, dead, oldest ready age ms or -1}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local len = redis.call('XLEN', KEYS[1])
local running, last = 0, nil
local groups = redis.pcall('XINFO', 'GROUPS', KEYS[1])
if type(groups) == 'table' and not groups.err then
  for _, g in ipairs(groups) do
    local name, pending, delivered
    for i = 1, #g, 2 do
      if g[i] == 'name' then name = g[i + 1]
      elseif g[i] == 'pending' then pending = g[i + 1]
      elseif g[i] == 'last-delivered-id' then delivered = g[i + 1] end
    end
    if name == ARGV[1] then running, last = pending, delivered end
  end
end
local first
if last then
  first = redis.call('XRANGE', KEYS[1], '(' .. last, '+', 'COUNT', 1)[1]
else
  first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1]
end
local oldest = -1
if first then
  local ms = tonumber(string.match(first[1], '^(%d+)'))
  oldest = math.max(0, now - ms)
end
return {len - running, running, redis.call('ZCARD', KEYS[2]), redis.call('ZCARD', KEYS[3]), oldest}
