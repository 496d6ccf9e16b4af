-- Renew (with ARGV[2]: for ARGV[2] ms) or release (without) a lease, only if we still hold it.
-- KEYS[1] the lease; ARGV[1] our token. Returns 1 when done, 0 when someone else holds it.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
if ARGV[2] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
else
  redis.call('DEL', KEYS[1])
end
return 1
