-- Enqueue one job, honouring an idempotency key and a delay.
-- KEYS[1] stream, KEYS[2] scheduled zset, KEYS[3] scheduled payload hash, KEYS[4] wake stream,
-- KEYS[5] idempotency key (optional)
-- ARGV[1] job id, ARGV[2] payload, ARGV[3] delay ms, ARGV[4] idempotency ttl s (0 = forever),
-- ARGV[5] attempts already made (a re-pushed copy keeps its count)
-- Returns {1, id} for a new job, {0, original id} for a duplicate.
local id = ARGV[1]
if #KEYS == 5 then
  local ttl = tonumber(ARGV[4])
  local set
  if ttl > 0 then
    set = redis.call('SET', KEYS[5], id, 'NX', 'EX', ttl)
  else
    set = redis.call('SET', KEYS[5], id, 'NX')
  end
  if not set then
    return {0, redis.call('GET', KEYS[5]) or id}
  end
end
local delay = tonumber(ARGV[3])
if delay > 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('ZADD', KEYS[2], now + delay, id)
  redis.call('HSET', KEYS[3], id, ARGV[5] .. ':' .. ARGV[2])
  -- Readers sleep until the earliest due time they saw; one that is now earlier must
  -- wake one of them, which recomputes its wait.
  if redis.call('ZRANGE', KEYS[2], 0, 0)[1] == id then
    redis.call('XADD', KEYS[4], 'MAXLEN', '~', 100, '*', 'due', now + delay)
  end
elseif ARGV[5] == '0' then
  redis.call('XADD', KEYS[1], '*', 'id', id, 'd', ARGV[2])
else
  redis.call('XADD', KEYS[1], '*', 'id', id, 'd', ARGV[2], 'a', ARGV[5])
end
return {1, id}
