-- Heartbeat, orphan recovery and graceful release, which all move a consumer's
-- unfinished deliveries back to the stream.
-- KEYS[1] stream, KEYS[2] workers zset, KEYS[3] dead zset, KEYS[4] wake stream
-- ARGV[1] group, ARGV[2] key base, ARGV[3] this consumer, ARGV[4] lease ms,
-- ARGV[5] max attempts, ARGV[6] dead retention s, ARGV[7] batch,
-- ARGV[8] mode: 'beat' (renew own lease, recover lapsed consumers) or 'release' (give back own deliveries)
-- Returns {jobs moved back, jobs buried, 1 if more work remains}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local stream, workers, dead, wake = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local group, base, me = ARGV[1], ARGV[2], ARGV[3]
local lease = tonumber(ARGV[4])
local max_attempts = tonumber(ARGV[5])
local dead_ttl = tonumber(ARGV[6])
local batch = tonumber(ARGV[7])
local mode = ARGV[8]

local function field(entry, name)
  local f = entry[2]
  for i = 1, #f, 2 do
    if f[i] == name then return f[i + 1] end
  end
  return nil
end

local moved, buried, more = 0, 0, 0

-- Give back every delivery of `consumer`; a lapsed lease counts as an attempt.
local function reclaim(consumer, count_attempt, reason)
  local pending = redis.pcall('XPENDING', stream, group, '-', '+', batch, consumer)
  if type(pending) ~= 'table' or pending.err then return end
  for _, p in ipairs(pending) do
    local eid = p[1]
    local entry = redis.call('XRANGE', stream, eid, eid)[1]
    redis.call('XACK', stream, group, eid)
    redis.call('XDEL', stream, eid)
    if entry then
      local jid = field(entry, 'id')
      local payload = field(entry, 'd')
      local attempts = tonumber(field(entry, 'a') or '0')
      local idem = field(entry, 'k')
      if count_attempt then attempts = attempts + 1 end
      if count_attempt and attempts >= max_attempts then
        local key = base .. ':dead:' .. jid
        redis.call('HSET', key, 'payload', payload, 'error', reason, 'attempts', attempts, 'died_at', now)
        if idem then redis.call('HSET', key, 'idem', idem) end
        redis.call('ZADD', dead, now, jid)
        if dead_ttl > 0 then
          redis.call('EXPIRE', key, dead_ttl)
          redis.call('ZREMRANGEBYSCORE', dead, '-inf', now - dead_ttl * 1000)
        end
        -- a dead job releases its idempotency key (unless the key names a newer job)
        if idem then
          local k = base .. ':idem:' .. idem
          if redis.call('GET', k) == jid then redis.call('DEL', k) end
        end
        buried = buried + 1
      else
        local fields = {'id', jid, 'd', payload}
        if attempts > 0 then
          fields[#fields + 1] = 'a'
          fields[#fields + 1] = attempts
        end
        if idem then
          -- the job is still pending, so it keeps its idempotency key
          fields[#fields + 1] = 'k'
          fields[#fields + 1] = idem
        end
        redis.call('XADD', stream, '*', unpack(fields))
        moved = moved + 1
      end
    end
  end
  if #pending < batch then
    redis.pcall('XGROUP', 'DELCONSUMER', stream, group, consumer)
    -- its unacknowledged wake-ups go too: they only woke a reader that is gone
    redis.pcall('XGROUP', 'DELCONSUMER', wake, group, consumer)
    redis.call('ZREM', workers, consumer)
  else
    more = 1
  end
end

if mode == 'release' then
  reclaim(me, false, '')
  return {moved, buried, more}
end

redis.call('ZADD', workers, now + lease, me)
if dead_ttl > 0 then
  -- dead job hashes expire on their own; this drops their index entries
  redis.call('ZREMRANGEBYSCORE', dead, '-inf', now - dead_ttl * 1000)
end

local lapsed = redis.call('ZRANGEBYSCORE', workers, '-inf', now, 'LIMIT', 0, 8)
for _, c in ipairs(lapsed) do
  reclaim(c, true, 'lease expired: worker ' .. c .. ' stopped heartbeating')
end

-- Consumers with deliveries but no heartbeat entry (lost on a Redis restart, say).
local consumers = redis.pcall('XINFO', 'CONSUMERS', stream, group)
if type(consumers) == 'table' and not consumers.err then
  for _, c in ipairs(consumers) do
    local name, pending, idle
    for i = 1, #c, 2 do
      if c[i] == 'name' then name = c[i + 1]
      elseif c[i] == 'pending' then pending = c[i + 1]
      elseif c[i] == 'idle' then idle = c[i + 1] end
    end
    if name ~= me and idle and idle > lease and not redis.call('ZSCORE', workers, name) then
      if pending and pending > 0 then
        reclaim(name, true, 'lease expired: worker ' .. name .. ' vanished')
      else
        redis.pcall('XGROUP', 'DELCONSUMER', stream, group, name)
        redis.pcall('XGROUP', 'DELCONSUMER', wake, group, name)
      end
    end
  end
end

-- Consumers that only ever got wake-ups, with no heartbeat entry: nothing to give back.
consumers = redis.pcall('XINFO', 'CONSUMERS', wake, group)
if type(consumers) == 'table' and not consumers.err then
  for _, c in ipairs(consumers) do
    local name, idle
    for i = 1, #c, 2 do
      if c[i] == 'name' then name = c[i + 1]
      elseif c[i] == 'idle' then idle = c[i + 1] end
    end
    if name ~= me and idle and idle > lease and not redis.call('ZSCORE', workers, name) then
      redis.pcall('XGROUP', 'DELCONSUMER', wake, group, name)
    end
  end
end
return {moved, buried, more}
