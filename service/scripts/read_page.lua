#!lua flags=no-writes
-- Read one page of a job's stored event frames, bounded in events AND in bytes.
--
-- XRANGE alone can only bound a page by count, and a count of large events can be any size;
-- this reads in small chunks and stops once the page is full, so what the gateway receives
-- (and must hold until its client takes it) is bounded by the bytes it asked for. A page always
-- holds at least one frame when there is one: events of any allowed size replay in full.
-- Read-only (no-writes): it runs under maxmemory pressure and on replicas.
--
-- KEYS[1] the job's events stream, KEYS[2] its meta hash
-- ARGV[1] read after this stream id (exclusive), ARGV[2] most frames, ARGV[3] most bytes
-- Returns {seq, status, more, frame, frame, ...}: the meta hash's `seq` and `status` (nil
-- when the job is unknown), more = 1 when the page stopped at a limit rather than at the end.
local meta = redis.call('HMGET', KEYS[2], 'seq', 'status')
local page = {meta[1], meta[2], 0}
local start = '(' .. ARGV[1]
local max_frames, max_bytes = tonumber(ARGV[2]), tonumber(ARGV[3])
local frames, bytes = 0, 0
-- Small first chunk: a page of large events then costs Redis little more than the page.
local chunk = 4
while frames < max_frames do
  local want = math.min(chunk, max_frames - frames)
  local entries = redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', want)
  for _, entry in ipairs(entries) do
    local frame = entry[2][2]
    if frames > 0 and bytes + #frame > max_bytes then
      page[3] = 1
      return page
    end
    frames = frames + 1
    bytes = bytes + #frame
    page[#page + 1] = frame
    start = '(' .. entry[1]
  end
  if #entries < want then
    return page
  end
  -- Size the next chunk from what was seen (at most 64 entries, so an odd large event
  -- after many small ones costs a bounded read).
  local left = math.floor((max_bytes - bytes) * frames / bytes) + 1
  chunk = math.max(1, math.min(64, left))
end
page[3] = 1
return page
