-- Move due delayed jobs to the stream, at most ARGV[1] of them per call,
-- so the cost is bounded whatever the size of the scheduled set.
-- KEYS[1] stream, KEYS[2] scheduled zset, KEYS[3] scheduled payload hash, KEYS[4] wake stream
-- ARGV[1] batch, ARGV[2] group, ARGV[3..] wake entries this reader received (acknowledged here)
-- Returns {promoted, ms until the next job is due or -1 if none}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if #ARGV > 2 then
  -- bounded by the reader's batch
  redis.call('XACK', KEYS[4], ARGV[2], unpack(ARGV, 3))
end
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, id in ipairs(ids) do
  local enc = redis.call('HGET', KEYS[3], id)
  if enc then
    -- 'attempts:payload', or 'attempts/n:' then an n-byte idempotency key, then the payload
    local sep = string.find(enc, '[:/]')
    local attempts = string.sub(enc, 1, sep - 1)
    local fields = {'id', id}
    if string.sub(enc, sep, sep) == ':' then
      fields[3], fields[4] = 'd', string.sub(enc, sep + 1)
    else
      local colon = string.find(enc, ':', sep + 1, true)
      local len = tonumber(string.sub(enc, sep + 1, colon - 1))
      fields[3], fields[4] = 'd', string.sub(enc, colon + 1 + len)
      fields[5], fields[6] = 'k', string.sub(enc, colon + 1, colon + len)
    end
    if attempts ~= '0' then
      fields[#fields + 1] = 'a'
      fields[#fields + 1] = attempts
    end
    redis.call('XADD', KEYS[1], '*', unpack(fields))
    redis.call('HDEL', KEYS[3], id)
  end
  redis.call('ZREM', KEYS[2], id)
end
local head = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
local wait = -1
if head[2] then
  wait = math.max(0, tonumber(head[2]) - now)
end
return {#ids, wait}
