-- Put a dead job back at the tail of the stream with a fresh attempt budget.
-- KEYS[1] stream, KEYS[2] dead zset, KEYS[3] dead job hash; ARGV[1] job id
local payload = redis.call('HGET', KEYS[3], 'payload')
redis.call('ZREM', KEYS[2], ARGV[1])
if not payload then return 0 end
redis.call('XADD', KEYS[1], '*', 'id', ARGV[1], 'd', payload)
redis.call('DEL', KEYS[3])
return 1
