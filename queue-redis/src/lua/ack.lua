-- Settle a batch of finished deliveries in one call.
-- KEYS[1] stream, KEYS[2] scheduled zset, KEYS[3] scheduled payload hash, KEYS[4] dead zset,
-- KEYS[5] wake stream
-- ARGV[1] group, ARGV[2] key base, ARGV[3] done retention s, ARGV[4] dead retention s,
-- ARGV[5] retry delay ms, ARGV[6] number n of successes, then
--   per success its entry id, followed by its job id when a done record is kept,
--   per failure 5 values: entry id, job id, outcome ('r' retry, 'd' dead), attempts made, error text
-- (successes are most of the traffic, so they carry only what they need).
-- Returns the number of deliveries this call settled (late acks of lost leases do not count).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local stream, group, base = KEYS[1], ARGV[1], ARGV[2]
local done_ttl = tonumber(ARGV[3])
local dead_ttl = tonumber(ARGV[4])
local retry_ms = tonumber(ARGV[5])

local function field(entry, name)
  local f = entry[2]
  for i = 1, #f, 2 do
    if f[i] == name then return f[i + 1] end
  end
  return nil
end

local settled = 0
local ok = tonumber(ARGV[6])
local first_failure = 7 + ok
if ok > 0 then
  local ids, from, to = ARGV, 7, 6 + ok
  if done_ttl > 0 then
    first_failure = 7 + 2 * ok
    ids, from, to = {}, 1, ok
    for i = 7, first_failure - 1, 2 do
      ids[#ids + 1] = ARGV[i]
      redis.call('SET', base .. ':done:' .. ARGV[i + 1], now, 'EX', done_ttl)
    end
  end
  -- the batch is bounded by the client (at most a few hundred ids), so unpack is safe
  local acked = redis.pcall('XACK', stream, group, unpack(ids, from, to))
  if type(acked) == 'number' then settled = settled + acked end
  redis.call('XDEL', stream, unpack(ids, from, to))
end

for i = first_failure, #ARGV, 5 do
  local eid, jid, outcome, attempts, err = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  local acked = redis.pcall('XACK', stream, group, eid)
  if acked == 1 then
    settled = settled + 1
    local entry = redis.call('XRANGE', stream, eid, eid)[1]
    redis.call('XDEL', stream, eid)
    if entry then
      local payload = field(entry, 'd')
      if outcome == 'r' then
        if retry_ms > 0 then
          redis.call('ZADD', KEYS[2], now + retry_ms, jid)
          redis.call('HSET', KEYS[3], jid, attempts .. ':' .. payload)
          if redis.call('ZRANGE', KEYS[2], 0, 0)[1] == jid then
            redis.call('XADD', KEYS[5], 'MAXLEN', '~', 100, '*', 'due', now + retry_ms)
          end
        else
          redis.call('XADD', stream, '*', 'id', jid, 'd', payload, 'a', attempts)
        end
      else
        local key = base .. ':dead:' .. jid
        redis.call('HSET', key, 'payload', payload, 'error', err, 'attempts', attempts, 'died_at', now)
        redis.call('ZADD', KEYS[4], now, jid)
        if dead_ttl > 0 then
          redis.call('EXPIRE', key, dead_ttl)
          redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - dead_ttl * 1000)
        end
      end
    end
  end
end
return settled
