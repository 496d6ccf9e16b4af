-- Append result events to a job's stream and publish each one, atomically.
--
-- KEYS[1] the job's events stream, KEYS[2] its meta hash, KEYS[3] its notification channel
-- ARGV[1] job id, ARGV[2] ttl in ms, ARGV[3] max events per job, ARGV[4] max bytes per event
-- frame, ARGV[5] max bytes of frames per job, ARGV[6] largest frame a notification carries,
-- ARGV[7] how to notify: PUBLISH, or SPUBLISH on a Redis Cluster (sharded Pub/Sub: the channel,
-- declared as KEYS[3], lives on the job's shard), then for each event: seq, kind ("data" |
-- "done" | "failed"), ts (ms), data (JSON text)
--
-- Idempotent: an event whose seq is already written is skipped (no second entry, no second
-- notification), so a command re-sent after a lost reply is harmless.
-- A notification carries the whole frame up to ARGV[6] bytes; above that only the event's
-- position ({"type":"stored","seq":N}), and gateways read the frame from the stream: a
-- stream of large events then never fills a subscriber's output buffer.
-- Returns {written, last_seq, outcome}: outcome 0 ok, 1 no such job, 2 job already finished,
-- 3 seq gap (the caller's idea of the next seq is wrong), 4 too many data events for one job,
-- 5 an event frame over the bytes per event, 6 the job's bytes would pass the bytes per job.
local meta = KEYS[2]
local state = redis.call('HMGET', meta, 'status', 'seq', 'bytes')
local status = state[1]
if not status then
  return {0, 0, 1}
end
local last = tonumber(state[2] or '0')
local stored = tonumber(state[3] or '0')
local job, ttl, max_events = ARGV[1], ARGV[2], tonumber(ARGV[3])
local max_event_bytes, max_job_bytes = tonumber(ARGV[4]), tonumber(ARGV[5])
local notify_max = tonumber(ARGV[6])
local publish = ARGV[7] == 'SPUBLISH' and 'SPUBLISH' or 'PUBLISH'
local written, outcome, ts = 0, 0, nil
for i = 8, #ARGV, 4 do
  local seq = tonumber(ARGV[i])
  if seq > last then
    if status == 'done' or status == 'failed' then
      outcome = 2
      break
    end
    if seq ~= last + 1 then
      outcome = 3
      break
    end
    local kind = ARGV[i + 1]
    -- The limits leave room for one terminal event, so an over-long job can still be failed.
    if seq > max_events and kind == 'data' then
      outcome = 4
      break
    end
    local id = ARGV[i] .. '-0'
    local frame = '{"seq":' .. ARGV[i] .. ',"job":"' .. job .. '","id":"' .. id ..
      '","type":"event","event":"' .. kind .. '","ts":' .. ARGV[i + 2] .. ',"data":' ..
      ARGV[i + 3] .. '}'
    if #frame > max_event_bytes then
      outcome = 5
      break
    end
    if kind == 'data' and stored + #frame > max_job_bytes then
      outcome = 6
      break
    end
    ts = ARGV[i + 2]
    redis.call('XADD', KEYS[1], id, 'f', frame)
    if #frame > notify_max then
      redis.call(publish, KEYS[3], '{"type":"stored","seq":' .. ARGV[i] .. '}')
    else
      redis.call(publish, KEYS[3], frame)
    end
    stored = stored + #frame
    last = seq
    written = written + 1
    if kind ~= 'data' then
      status = kind
    elseif status == 'queued' then
      status = 'running'
    end
  end
end
if written > 0 then
  redis.call('HSET', meta, 'seq', last, 'status', status, 'updated_ms', ts, 'bytes', stored)
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', meta, ttl)
end
return {written, last, outcome}
