-- Enqueue one job, honouring an idempotency key and a delay.
-- KEYS[1] stream, KEYS[2] scheduled zset, KEYS[3] scheduled payload hash, KEYS[4] wake stream,
-- KEYS[5] idempotency key (optional)
-- ARGV[1] job id, ARGV[2] payload, ARGV[3] delay ms, ARGV[4] idempotency ttl s (0 = forever),
-- ARGV[5] attempts already made (a re-pushed copy keeps its count),
-- ARGV[6] the idempotency key as given (with KEYS[5])
-- Returns {1, id} for a new job, {0, original id} for a duplicate.
--
-- A job with a key carries it (field `k` in the stream, `attempts/len:key` in the scheduled
-- hash), so the script that settles the job deletes the key: it dedupes only while the job
-- is pending. The TTL is a safety net for a job lost some other way; it runs from the due time.
local id = ARGV[1]
local delay = tonumber(ARGV[3])
local key = nil
if #KEYS == 5 then
  key = ARGV[6]
  local ttl = tonumber(ARGV[4])
  local set
  if ttl > 0 then
    set = redis.call('SET', KEYS[5], id, 'NX', 'PX', delay + ttl * 1000)
  else
    set = redis.call('SET', KEYS[5], id, 'NX')
  end
  if not set then
    return {0, redis.call('GET', KEYS[5]) or id}
  end
end
if delay > 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local enc
  if key then
    enc = ARGV[5] .. '/' .. #key .. ':' .. key .. ARGV[2]
  else
    enc = ARGV[5] .. ':' .. ARGV[2]
  end
  redis.call('ZADD', KEYS[2], now + delay, id)
  redis.call('HSET', KEYS[3], id, enc)
  -- Readers sleep until the earliest due time they saw; one that is now earlier must
  -- wake one of them, which recomputes its wait.
  if redis.call('ZRANGE', KEYS[2], 0, 0)[1] == id then
    redis.call('XADD', KEYS[4], 'MAXLEN', '~', 100, '*', 'due', now + delay)
  end
else
  local fields = {'id', id, 'd', ARGV[2]}
  if ARGV[5] ~= '0' then
    fields[#fields + 1] = 'a'
    fields[#fields + 1] = ARGV[5]
  end
  if key then
    fields[#fields + 1] = 'k'
    fields[#fields + 1] = key
  end
  redis.call('XADD', KEYS[1], '*', unpack(fields))
end
return {1, id}
