-- A worker takes a job: count the attempt, mark it running, and say where it stands.
--
-- KEYS[1] the job's meta hash; ARGV[1] now (ms)
-- Returns {attempts, last_seq, status}, or {0, 0, ''} when the job is unknown (expired, or
-- Redis lost it). A finished job is left as it is, so its status and expiry stay untouched.
local meta = KEYS[1]
local status = redis.call('HGET', meta, 'status')
if not status then
  return {0, 0, ''}
end
local last = tonumber(redis.call('HGET', meta, 'seq') or '0')
if status == 'done' or status == 'failed' then
  return {tonumber(redis.call('HGET', meta, 'attempts') or '0'), last, status}
end
local attempts = redis.call('HINCRBY', meta, 'attempts', 1)
redis.call('HSET', meta, 'status', 'running', 'updated_ms', ARGV[1])
return {attempts, last, 'running'}
