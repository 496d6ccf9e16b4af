-- Create a job's meta hash unless it exists, so a re-sent create changes nothing.
--
-- KEYS[1] the job's meta hash; ARGV[1] kind, ARGV[2] now (ms), ARGV[3] ttl in ms
-- Returns 1 when created, 0 when it already existed.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], 'status', 'queued', 'kind', ARGV[1], 'seq', 0, 'attempts', 0,
  'created_ms', ARGV[2], 'updated_ms', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
