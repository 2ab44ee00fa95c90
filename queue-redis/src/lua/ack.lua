-- Settle a batch of finished deliveries in one call.
-- KEYS[1] stream, KEYS[2] scheduled zset, KEYS[3] scheduled payload hash, KEYS[4] dead zset,
-- KEYS[5] wake stream
-- ARGV[1] group, ARGV[2] key base, ARGV[3] done retention s, ARGV[4] dead retention s,
-- ARGV[5] retry delay ms, ARGV[6] idempotency ttl s, ARGV[7] number n of successes without
-- an idempotency key, ARGV[8] number m of successes with one, then
--   per success without a key its entry id, followed by its job id when a done record is kept,
--   per success with a key 3 values: entry id, job id, idempotency key,
--   per failure 5 values: entry id, job id, outcome ('r' retry, 'd' dead), attempts made, error text
-- (successes are most of the traffic, so they carry only what they need).
-- A settled job (done or dead) releases its idempotency key, so a later push with that key
-- creates a new job; a retried one keeps it.
-- Returns the number of deliveries this call settled (late acks of lost leases do not count).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local stream, group, base = KEYS[1], ARGV[1], ARGV[2]
local done_ttl = tonumber(ARGV[3])
local dead_ttl = tonumber(ARGV[4])
local retry_ms = tonumber(ARGV[5])
local idem_ttl = tonumber(ARGV[6])

local function field(entry, name)
  local f = entry[2]
  for i = 1, #f, 2 do
    if f[i] == name then return f[i + 1] end
  end
  return nil
end

-- the key may name a newer job if its TTL lapsed meanwhile: only this job's use is released
local function release(key, jid)
  if key then
    local k = base .. ':idem:' .. key
    if redis.call('GET', k) == jid then redis.call('DEL', k) end
  end
end

local settled = 0
local ok = tonumber(ARGV[7])
local keyed = tonumber(ARGV[8])
local first_keyed = 9 + ok
if ok > 0 then
  local ids, from, to = ARGV, 9, 8 + ok
  if done_ttl > 0 then
    first_keyed = 9 + 2 * ok
    ids, from, to = {}, 1, ok
    for i = 9, first_keyed - 1, 2 do
      ids[#ids + 1] = ARGV[i]
      redis.call('SET', base .. ':done:' .. ARGV[i + 1], now, 'EX', done_ttl)
    end
  end
  -- the batch is bounded by the client (at most a few hundred ids), so unpack is safe
  local acked = redis.pcall('XACK', stream, group, unpack(ids, from, to))
  if type(acked) == 'number' then settled = settled + acked end
  redis.call('XDEL', stream, unpack(ids, from, to))
end

-- one by one: only a delivery this call settles may release its key (a late ack of a lost
-- lease must not, as the job is back in the stream)
local first_failure = first_keyed + 3 * keyed
for i = first_keyed, first_failure - 1, 3 do
  local eid, jid = ARGV[i], ARGV[i + 1]
  if done_ttl > 0 then
    redis.call('SET', base .. ':done:' .. jid, now, 'EX', done_ttl)
  end
  if redis.pcall('XACK', stream, group, eid) == 1 then
    settled = settled + 1
    redis.call('XDEL', stream, eid)
    release(ARGV[i + 2], jid)
  end
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
      local key = field(entry, 'k')
      if outcome == 'r' then
        if retry_ms > 0 then
          local enc
          if key then
            enc = attempts .. '/' .. #key .. ':' .. key .. payload
            -- the safety net runs from the new due time, like a delayed push's
            local k = base .. ':idem:' .. key
            if idem_ttl > 0 and redis.call('GET', k) == jid then
              local left = redis.call('PTTL', k)
              if left >= 0 and left < retry_ms + idem_ttl * 1000 then
                redis.call('PEXPIRE', k, retry_ms + idem_ttl * 1000)
              end
            end
          else
            enc = attempts .. ':' .. payload
          end
          redis.call('ZADD', KEYS[2], now + retry_ms, jid)
          redis.call('HSET', KEYS[3], jid, enc)
          if redis.call('ZRANGE', KEYS[2], 0, 0)[1] == jid then
            redis.call('XADD', KEYS[5], 'MAXLEN', '~', 100, '*', 'due', now + retry_ms)
          end
        elseif key then
          redis.call('XADD', stream, '*', 'id', jid, 'd', payload, 'a', attempts, 'k', key)
        else
          redis.call('XADD', stream, '*', 'id', jid, 'd', payload, 'a', attempts)
        end
      else
        local dkey = base .. ':dead:' .. jid
        redis.call('HSET', dkey, 'payload', payload, 'error', err, 'attempts', attempts, 'died_at', now)
        -- kept so a replay can take the key again
        if key then redis.call('HSET', dkey, 'idem', key) end
        redis.call('ZADD', KEYS[4], now, jid)
        if dead_ttl > 0 then
          redis.call('EXPIRE', dkey, dead_ttl)
          redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - dead_ttl * 1000)
        end
        release(key, jid)
      end
    end
  end
end
return settled
