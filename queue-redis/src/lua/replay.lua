-- Put a dead job back at the tail of the stream with a fresh attempt budget.
-- KEYS[1] stream, KEYS[2] dead zset, KEYS[3] dead job hash
-- ARGV[1] job id, ARGV[2] key base, ARGV[3] idempotency ttl s (0 = forever)
-- A job released its idempotency key when it died. The replayed job takes it again if no
-- push has taken it since, so a repeated push stays a no-op while it is pending; otherwise
-- it runs without one (the key now names a newer job).
local row = redis.call('HMGET', KEYS[3], 'payload', 'idem')
local payload, key = row[1], row[2]
redis.call('ZREM', KEYS[2], ARGV[1])
if not payload then return 0 end
local fields = {'id', ARGV[1], 'd', payload}
if key then
  local k = ARGV[2] .. ':idem:' .. key
  local ttl = tonumber(ARGV[3])
  local set
  if ttl > 0 then
    set = redis.call('SET', k, ARGV[1], 'NX', 'EX', ttl)
  else
    set = redis.call('SET', k, ARGV[1], 'NX')
  end
  if set then
    fields[5], fields[6] = 'k', key
  end
end
redis.call('XADD', KEYS[1], '*', unpack(fields))
redis.call('DEL', KEYS[3])
return 1
